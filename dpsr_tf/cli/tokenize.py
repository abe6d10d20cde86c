"""dpsr tokenize: print the features and ids of texts (from --text or stdin, one per line)."""
import sys

from absl import flags

from dpsr_tf.cli import tokenizer_flags
from dpsr_tf.tokenization import Tokenizer

_TEXT = flags.DEFINE_multi_string("text", None, "Text to tokenize; repeatable. Default: stdin.")
_IDS = flags.DEFINE_bool("ids", True, "Print ids beside the feature keys.")


def main(argv):
    del argv
    tok = Tokenizer(tokenizer_flags.config_from_flags())
    texts = _TEXT.value if _TEXT.value else [line.rstrip("\n") for line in sys.stdin]
    for text, keys in zip(texts, tok.features(texts)):
        print(f"{text!r}: {len(keys)} features")
        for key in keys:
            print(f"  {key}\t{tok.id_of(key)}" if _IDS.value else f"  {key}")
