"""dpsr demo: the embedded end-to-end demo (`make demo`).

Today it shows the foundation: sample English, Chinese, mixed and misspelled queries go through
the pybind11 tokenizer and the Dpsr>Tokenize TensorFlow op, which must agree id for id.
Later stages (prepare, train, index, export, serve, query) join as they land.
"""
from absl import flags

from dpsr_tf.tokenization import Tokenizer, TokenizerConfig

_QUERIES = ["Apple iPhone 15 Pro", "苹果手机 256G", "ovivo phone case", "Ｎｉｋｅ 跑步鞋 men",
            "cordless drill 20v"]
flags.DEFINE_bool("verbose", False, "Print every feature key.")


def main(argv):
    del argv
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from dpsr_tf.tokenization import tokenize_op  # pylint: disable=g-import-not-at-top

    config = TokenizerConfig()
    tok = Tokenizer(config)
    print("== 1. tokenizer: one C++ core, pybind11 and TF op side by side ==")
    ids, splits = tok.tokenize(_QUERIES)
    ragged = tokenize_op.tokenize(tf.constant(_QUERIES), config)
    for i, (query, keys) in enumerate(zip(_QUERIES, tok.features(_QUERIES))):
        py_ids = ids[splits[i]:splits[i + 1]].tolist()
        op_ids = ragged[i].numpy().tolist()
        status = "same ids" if py_ids == op_ids else "MISMATCH"
        shown = keys if flags.FLAGS.verbose else keys[:8] + (["..."] if len(keys) > 8 else [])
        print(f"{query!r}: {len(keys)} features, pybind11 vs op: {status}")
        print("   " + " ".join(shown))
        if py_ids != op_ids:
            raise SystemExit("demo failed: the pybind11 and TF op tokenizers disagree")
