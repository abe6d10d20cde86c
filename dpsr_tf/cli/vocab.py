"""dpsr vocab: count features over text files (one text per line) and write a vocabulary."""
import json
import os

from absl import flags, logging

from dpsr_tf.cli import tokenizer_flags
from dpsr_tf.tokenization import build_vocabulary

_INPUTS = flags.DEFINE_multi_string("input", None, "Text file, one text per line; repeatable.")
_OUTPUT = flags.DEFINE_string("output", None, "Vocabulary file to write.")
_MIN_COUNT = flags.DEFINE_integer("min_count", 2, "Keep features seen at least this often.")
_MAX_SIZE = flags.DEFINE_integer("max_size", None, "Keep at most this many features.")
flags.mark_flags_as_required(["input", "output"])


def _lines(paths):
    for path in paths:
        with open(path, "rb") as f:
            for line in f:
                yield line.rstrip(b"\r\n")


def main(argv):
    del argv
    config = tokenizer_flags.config_from_flags()
    for path in _INPUTS.value:
        if not os.path.isfile(path):
            raise SystemExit(f"dpsr vocab: --input {path}: no such file")
    config = build_vocabulary(_lines(_INPUTS.value), config, _OUTPUT.value,
                              min_count=_MIN_COUNT.value, max_size=_MAX_SIZE.value)
    with open(_OUTPUT.value + ".config.json", "w") as f:
        f.write(config.to_json())
    with open(_OUTPUT.value, encoding="utf-8") as f:
        size = sum(1 for line in f if not line.startswith("#"))
    logging.info("wrote %s: %d features (config in %s.config.json)", _OUTPUT.value, size,
                 _OUTPUT.value)
    print(json.dumps({"vocab_file": _OUTPUT.value, "size": size}))
