"""Feature ids: the documented hash re-implemented in pure Python, and vocabulary mode."""
import os

import numpy as np
import pytest

from dpsr_tf.tokenization import Tokenizer, TokenizerConfig, build_vocabulary
from dpsr_tf.tokenization.vocab import read_vocabulary

MASK = (1 << 64) - 1


def reference_hash(key: str) -> int:
    """FNV-1a 64 over the UTF-8 bytes, then the splitmix64 finalizer (docs/tokenizer.md)."""
    h = 0xCBF29CE484222325
    for byte in key.encode("utf-8"):
        h ^= byte
        h = (h * 0x100000001B3) & MASK
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & MASK
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & MASK
    h ^= h >> 31
    return h


def test_reference_hash_known_value():
    # FNV-1a("") is the offset basis 0xcbf29ce484222325; the splitmix64 finalizer of it is
    # pinned here, so a change to either half of the documented hash is caught.
    assert reference_hash("") == 0xF52A15E9A9B5E89B
    tok = Tokenizer(TokenizerConfig(num_buckets=(1 << 62)))
    assert tok.id_of("") == reference_hash("") % (1 << 62)


@pytest.mark.parametrize("num_buckets", [1, 7, 1000, 1 << 20, (1 << 63) - 1])
def test_ids_equal_reference_hash(num_buckets):
    tok = Tokenizer(TokenizerConfig(num_buckets=num_buckets))
    texts = ["Apple iPhone 15", "苹果手机壳", "ovivo x200 pro", "ÉCOLE 한국 カメラ"]
    ids, splits = tok.tokenize(texts)
    keys = [k for row in tok.features(texts) for k in row]
    assert splits.tolist()[-1] == len(keys)
    assert ids.tolist() == [reference_hash(k) % num_buckets for k in keys]
    assert ids.dtype == np.int64 and splits.dtype == np.int64


def test_row_splits_layout():
    tok = Tokenizer()
    texts = ["a", "", "b c", "中"]
    ids, splits = tok.tokenize(texts)
    counts = [len(f) for f in tok.features(texts)]
    assert counts == [2, 0, 5, 1]  # a: w,t ; b c: w,t,w,ww,t ; 中: c
    assert splits.tolist() == [0, 2, 2, 7, 8]
    assert len(ids) == 8


def test_vocabulary_round_trip(tmp_path):
    corpus = ["red apple", "red apple pie", "green apple", "苹果", "苹果"]
    base = TokenizerConfig(letter_trigrams=False, num_oov_buckets=10)
    path = str(tmp_path / "vocab.txt")
    config = build_vocabulary(corpus, base, path, min_count=2)
    assert config.vocab_file == path
    # Counts by hand: w:apple 3, w:red 2, ww:red apple 2, c:苹 2, c:果 2, cc:苹果 2;
    # everything else once. Sorted by (-count, key).
    assert list(read_vocabulary(path)) == [
        "w:apple", "c:果", "c:苹", "cc:苹果", "w:red", "ww:red apple"]
    tok = Tokenizer(config)
    assert tok.vocab_size == 6 and tok.id_space == 16
    (keys,) = tok.features(["red apple tart"])
    ids = tok.tokenize_one("red apple tart").tolist()
    vocab = {k: i for i, k in enumerate(read_vocabulary(path))}
    want = [vocab[k] if k in vocab else 6 + reference_hash(k) % 10 for k in keys]
    assert ids == want
    assert ids[:3] == [4, 0, 5]  # w:red, w:apple, ww:red apple
    assert all(6 <= i < 16 for i in ids[3:])  # w:tart and ww:apple tart are OOV


def test_vocabulary_max_size_and_determinism(tmp_path):
    corpus = [f"item{i % 50} shared" for i in range(500)]
    a = build_vocabulary(corpus, TokenizerConfig(), str(tmp_path / "a.txt"), max_size=20)
    b = build_vocabulary(corpus, TokenizerConfig(), str(tmp_path / "b.txt"), max_size=20)
    assert len(read_vocabulary(a.vocab_file)) == 20
    with open(a.vocab_file, "rb") as fa, open(b.vocab_file, "rb") as fb:
        assert fa.read().replace(b"a.txt", b"") == fb.read().replace(b"b.txt", b"")


@pytest.mark.parametrize("content,error", [
    ("w:a\t3\nw:a\t2\n", "vocab.txt:2: duplicate feature key 'w:a'"),
    ("w:a\t3\n\t2\n", "vocab.txt:2: empty feature key"),
])
def test_bad_vocabulary_file_names_file_and_line(tmp_path, content, error):
    path = tmp_path / "vocab.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=error):
        Tokenizer(TokenizerConfig(vocab_file=str(path)))


@pytest.mark.parametrize("field,value", [
    ("num_buckets", 0), ("num_oov_buckets", 0), ("max_tokens", 0), ("max_input_bytes", -1),
    ("max_word_chars", 0)])
def test_bad_config_is_value_error_naming_field(field, value):
    with pytest.raises(ValueError, match=f"{field} must be >= 1, got {value}"):
        Tokenizer(TokenizerConfig(**{field: value}))


def test_all_features_disabled_is_an_error():
    off = dict(word_unigrams=False, word_bigrams=False, letter_trigrams=False,
               cjk_unigrams=False, cjk_bigrams=False)
    with pytest.raises(ValueError, match="enable at least one"):
        Tokenizer(TokenizerConfig(**off))


def test_missing_vocabulary_file():
    with pytest.raises(ValueError, match="cannot open vocabulary file /no/such/vocab"):
        Tokenizer(TokenizerConfig(vocab_file="/no/such/vocab"))


def test_non_text_input_is_type_error():
    with pytest.raises(TypeError, match=r"texts\[1\] must be str or bytes"):
        Tokenizer().tokenize(["ok", 3])


def test_config_json_round_trip(tmp_path):
    config = TokenizerConfig(num_buckets=77, letter_trigrams=False, vocab_file="v.txt")
    assert TokenizerConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown field .num_bucket."):
        TokenizerConfig.from_json('{"num_bucket": 3}')
