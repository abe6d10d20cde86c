"""WordPiece tokenization of a pretrained BERT-family encoder, in the graph.

    ids, mask = wordpiece_ids(texts, vocab_file, lower_case=True, max_seq_length=256)

BERT's basic tokenization (clean text, split on whitespace and punctuation, each CJK ideograph
its own word, lower-case and strip accents for uncased models) then greedy longest-match-first
WordPiece, as Hugging Face's BertTokenizer does, by tensorflow-text's FastBertTokenizer op: the
same op in training and in the servable, so offline and online ids cannot differ. Each text
becomes [CLS] pieces [SEP], truncated to max_seq_length tokens, padded with [PAD] (id 0).
"""
from typing import Tuple

import tensorflow as tf

try:
    import tensorflow_text as tf_text  # optional: only pretrained encoders need it
except ImportError:  # pragma: no cover - reported when used
    tf_text = None

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def read_vocab(vocab_file: str):
    """[tokens] of a vocab.txt (line i = id i), with the ids of the special tokens checked.

    Raises:
      ValueError: a special token is missing.
    """
    with open(vocab_file, encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise ValueError(f"{vocab_file}: the WordPiece vocabulary lacks {missing}")
    return tokens


class WordPieceTokenizer:
    """texts [B] string -> (ids [B, T] int32, mask [B, T] int32), T <= max_seq_length.

    Args:
      vocab_file: the encoder's vocab.txt.
      lower_case: lower-case and strip accents first (uncased models).
      max_seq_length: tokens per text including [CLS] and [SEP].
    """

    def __init__(self, vocab_file: str, lower_case: bool, max_seq_length: int):
        if tf_text is None:
            raise ImportError("pretrained encoders tokenize with tensorflow-text "
                              "(requirements.txt pins 2.15): run tools/bootstrap.sh")
        if max_seq_length < 3:
            raise ValueError(f"max_seq_length must be >= 3, got {max_seq_length}")
        tokens = read_vocab(vocab_file)
        self._cls, self._sep = tokens.index("[CLS]"), tokens.index("[SEP]")
        self.max_seq_length = max_seq_length
        self._tokenizer = tf_text.FastBertTokenizer(
            tokens, suffix_indicator="##", max_bytes_per_word=100, token_out_type=tf.int64,
            unknown_token="[UNK]", no_pretokenization=False, support_detokenization=False,
            lower_case_nfd_strip_accents=lower_case)

    def __call__(self, texts: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        with tf.name_scope("wordpiece"):
            pieces = self._tokenizer.tokenize(texts)       # [B, pieces] (or [B, words, pieces])
            if pieces.ragged_rank > 1:
                pieces = pieces.merge_dims(1, -1)
            pieces = pieces[:, :self.max_seq_length - 2]
            rows = pieces.nrows()
            cls = tf.fill([rows, 1], tf.constant(self._cls, tf.int64))
            sep = tf.fill([rows, 1], tf.constant(self._sep, tf.int64))
            ids = tf.concat([cls, pieces, sep], axis=1)
            mask = tf.ones_like(ids)
            return (tf.cast(ids.to_tensor(0), tf.int32), tf.cast(mask.to_tensor(0), tf.int32))
