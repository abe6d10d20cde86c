"""Golden feature lists of the tokenizer: worked out by hand from docs/tokenizer.md."""
import pytest

from dpsr_tf.tokenization import Tokenizer, TokenizerConfig

TOK = Tokenizer(TokenizerConfig())


def tri(word):
    """Trigrams of "#word#", the documented letter-trigram rule."""
    marked = "#" + word + "#"
    return ["t:" + marked[i:i + 3] for i in range(len(marked) - 2)]


GOLDEN = [
    # English: case folding, unigrams, bigrams, trigrams in emission order.
    ("Cordless Drill", ["w:cordless", *tri("cordless"), "w:drill", "ww:cordless drill",
                        *tri("drill")]),
    # Digits are words; punctuation separates but does not break bigrams.
    ("20v, drill!", ["w:20v", *tri("20v"), "w:drill", "ww:20v drill", *tri("drill")]),
    # Chinese: one token per character, bigrams of adjacent characters.
    ("苹果手机", ["c:苹", "c:果", "cc:苹果", "c:手", "cc:果手", "c:机", "cc:手机"]),
    # Mixed: a CJK character ends a word and breaks the word bigram; a Latin word breaks
    # the CJK bigram.
    ("iphone手机 case", ["w:iphone", *tri("iphone"), "c:手", "c:机", "cc:手机", "w:case",
                        *tri("case")]),
    # Typo: 'ovivo' shares the trigrams viv, ivo, vo# with 'vivo'.
    ("ovivo", ["w:ovivo", *tri("ovivo")]),
    # Full-width forms fold to ASCII, then case folds.
    ("ＮＩＫＥ　Ａｉｒ", ["w:nike", *tri("nike"), "w:air", "ww:nike air", *tri("air")]),
    # Emoji and symbols separate.
    ("love😀it", ["w:love", *tri("love"), "w:it", "ww:love it", *tri("it")]),
    # Latin-1 and Cyrillic words fold case and stay words.
    ("ÉCOLE Москва", ["w:école", *tri("école"), "w:москва", "ww:école москва",
                      *tri("москва")]),
    # Japanese kana and Korean hangul are CJK-class characters.
    ("カメラ 한국", ["c:カ", "c:メ", "cc:カメ", "c:ラ", "cc:メラ", "c:한", "c:국", "cc:한국"]),
    # Empty and separator-only inputs have no features.
    ("", []),
    ("  ,.;!?  ", []),
]


@pytest.mark.parametrize("text,want", GOLDEN, ids=[g[0] or "<empty>" for g in GOLDEN])
def test_golden_features(text, want):
    assert TOK.features([text]) == [want]


@pytest.mark.parametrize("raw,want", [
    # Invalid bytes become U+FFFD, a separator: "ab", then "cd".
    (b"ab\xffcd", ["w:ab", *tri("ab"), "w:cd", "ww:ab cd", *tri("cd")]),
    # A truncated 3-byte sequence at the end is dropped as a separator.
    (b"tv\xe6\x89", ["w:tv", *tri("tv")]),
    # An overlong encoding of 'A' (C1 81) is not 'A'.
    (b"x\xc1\x81y", ["w:x", "t:#x#", "w:y", "ww:x y", "t:#y#"]),
    # A UTF-16 surrogate encoded in UTF-8 (ED A0 80) is invalid.
    (b"\xed\xa0\x80", []),
])
def test_invalid_utf8_is_replaced_not_an_error(raw, want):
    assert TOK.features([raw]) == [want]


def test_str_and_bytes_agree():
    text = "Apple 苹果 ÉCOLE"
    assert TOK.features([text]) == TOK.features([text.encode("utf-8")])


@pytest.mark.parametrize("config,text,want", [
    (TokenizerConfig(word_bigrams=False, letter_trigrams=False), "a b 中国",
     ["w:a", "w:b", "c:中", "c:国", "cc:中国"]),
    (TokenizerConfig(word_unigrams=False, letter_trigrams=False, cjk_unigrams=False),
     "a b 中国", ["ww:a b", "cc:中国"]),
    (TokenizerConfig(max_tokens=3), "apple", ["w:apple", "t:#ap", "t:app"]),
    (TokenizerConfig(max_word_chars=4, letter_trigrams=False), "abcdefgh xyz",
     ["w:abcd", "w:xyz", "ww:abcd xyz"]),
    (TokenizerConfig(max_input_bytes=7, letter_trigrams=False), "abc 中国",  # 中 ends at 7
     ["w:abc", "c:中"]),
])
def test_feature_switches_and_caps(config, text, want):
    assert Tokenizer(config).features([text]) == [want]


def test_very_long_input_is_bounded():
    config = TokenizerConfig()
    huge = ("word " * 250_000).encode()  # 1.25 MB
    (keys,) = TOK.features([huge])
    assert len(keys) == config.max_tokens
    (single,) = TOK.features(["x" * 1_000_000])  # one 1 MB word
    assert single[0] == "w:" + "x" * config.max_word_chars
    assert len(single) == 1 + config.max_word_chars
