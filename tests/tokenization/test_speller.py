"""The catalog speller (C++ core through pybind11 and as the Dpsr>SpellCorrect op) against a
plain-Python reference of its rules, hand-worked corrections, and the vocabulary file."""
import itertools
import random

import pytest

from dpsr_tf.tokenization.speller import (Speller, SpellerConfig, word_counts,
                                          write_vocabulary)


# ----------------------------------------------------------------- the independent reference

def _osa(a, b):
    """Optimal string alignment distance, the textbook full table."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i, j in itertools.product(range(1, len(a) + 1), range(1, len(b) + 1)):
        cost = 0 if a[i - 1] == b[j - 1] else 1
        d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
        if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
            d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def _reference_word(counts, word, max_distance=2, long_word=6):
    """The header's rules by brute force: every vocabulary word is compared."""
    if word in counts or not 3 <= len(word) <= 24 or not word.isascii() or word.isdigit():
        return None
    if any(c.isdigit() for c in word):
        parts = ["".join(g) for _, g in itertools.groupby(word, key=str.isdigit)]
        return " ".join(parts) if all(p in counts for p in parts) else None
    limit = max_distance if len(word) >= long_word else 1
    ranked = sorted((_osa(word, w) + (w[0] != word[0]), -c, w) for w, c in counts.items()
                    if w.isascii() and not w.isdigit()
                    and _osa(word, w) <= limit)
    if ranked:
        return ranked[0][2]
    best = None
    for i in range(3, len(word) - 2):
        left, right = word[:i], word[i:]
        if left in counts and right in counts:
            rarer = min(counts[left], counts[right])
            if best is None or rarer > best[0]:
                best = (rarer, f"{left} {right}")
    return None if best is None else best[1]


# ----------------------------------------------------------------- a small catalog by hand

CATALOG = [
    "Hampton Bay 52 in. Ceiling Fan with Light Kit",
    "Hunter Ceiling Fan 44 in. White",
    "Shelving Unit 5-Tier Steel",
    "Closet Shelving Kit White",
    "Sun Joe Snow Thrower 18 in.",
    "Snow Shovel 18 in. Blower Nozzle",
    "Wood Fence Post 4 in. x 4 in. x 6 ft",
    "Fence Picket 6 ft Cedar",
    "Valve Stem Kit",
    "Timer Switch 7-Day",
    "Dimmer Switch Single Pole",
    "Dimmer Switch 3-Way",
    "手机 Case",
]


@pytest.fixture(scope="module")
def speller():
    return Speller.from_texts(CATALOG)


def test_vocabulary_counts_documents():
    counts = word_counts(CATALOG)
    assert counts["ceiling"] == 2
    assert counts["in"] == 5          # once per title that uses it (twice in one)
    assert counts["dimmer"] == 2
    assert "手" not in counts and "手机" not in counts   # CJK characters are not words


@pytest.mark.parametrize("query, want", [
    ("outdoor ceilikng fan", "outdoor ceiling fan"),     # 1 edit; "outdoor" has no candidate
    ("black laminate shelfing", "black laminate shelving"),
    ("fencde posts 6ft", "fence post 6 ft"),             # a digit/letter split; the plural is
                                                          # 1 edit from the catalog's word
    ("vlave stem", "valve stem"),                         # a transposition
    ("shower valve", "shovel valve"),                     # an unknown real word is corrected
    ("snowblower", "snow blower"),                        # nothing within 2 edits: the split
    ("dimer switch", "dimmer switch"),                    # "timer" is 1 edit too, but its
                                                          # first letter differs
    ("fan 52in", "fan 52 in"),
    ("手机 ceilng", "手机 ceiling"),                      # CJK kept, glued together
    ("手 机 ceilng", "手 机 ceiling"),                    # ... only where they were adjacent
    ("삼성 냉장고, ceilng", "삼성 냉장고 ceiling"),        # Korean keeps its word boundaries
    ("café " * 16 + "ceilng", "café " * 16 + "ceiling"),  # words never searched don't count
                                                          # toward the 16 searched per query
])
def test_corrections(speller, query, want):
    assert speller.rewrite(query) == want
    assert speller.correct([query]) == [want]


@pytest.mark.parametrize("query", [
    "Ceiling  FAN!",          # known words only: the query comes back byte for byte
    "fan 1021424",            # a number
    "fan x99z",               # a model number ("z" is no word)
    "fn",                     # too short to correct
    "fän",                    # not ASCII: never corrected
    "",
])
def test_nothing_to_correct_keeps_the_query(speller, query):
    assert speller.rewrite(query) is None
    assert speller.correct([query]) == [query]


def test_short_words_take_one_edit_long_ones_two(speller):
    assert speller.correct_word("shelvng") == "shelving"
    assert speller.correct_word("vlavve") == "valve"       # 6 letters: 2 edits allowed
    assert speller.correct_word("fnce") == "fence"          # 4 letters: 1 edit
    assert speller.correct_word("fnec") is None             # 2 edits: too many for 4 letters
    one_edit = Speller.from_texts(CATALOG, SpellerConfig(max_distance=1))
    assert one_edit.correct_word("vlavve") is None


def test_ties_go_to_the_word_more_items_use():
    assert Speller({"bolt": 5, "boat": 2, "colt": 9}).correct_word("boot") == "bolt"
    assert Speller({"bolt": 2, "boat": 5}).correct_word("boot") == "boat"
    assert Speller({"bolt": 3, "boat": 3}).correct_word("boot") == "boat"   # then byte order


def _typos(rng, word):
    if not word:
        return rng.choice("abc")
    i = rng.randrange(len(word))
    c = rng.choice("abcdefghijklmnopqrstuvwxyz")
    kind = rng.randrange(4)
    if kind == 0:
        return word[:i] + word[i + 1:]
    if kind == 1:
        return word[:i] + c + word[i:]
    if kind == 2:
        return word[:i] + c + word[i + 1:]
    if i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return word + c


def test_agrees_with_the_brute_force_reference_on_random_typos():
    rng = random.Random(7)
    letters = "abcdefghij"
    counts = {"".join(rng.choice(letters) for _ in range(rng.randint(2, 9))): rng.randint(1, 20)
              for _ in range(400)}
    counts.update({"12": 3, "ft": 4, "in": 6})
    speller = Speller(counts)
    words = sorted(counts)
    checked = corrected = 0
    for _ in range(600):
        word = rng.choice(words)
        for _ in range(rng.randint(1, 3)):
            word = _typos(rng, word)
        if rng.random() < 0.1:
            word = rng.choice(["12", "7"]) + word
        want = _reference_word(counts, word)
        assert speller.correct_word(word) == want, word
        checked += 1
        corrected += want is not None
    assert corrected > 200 and checked - corrected > 50    # both outcomes exercised


def test_vocabulary_file_round_trip_and_errors(tmp_path):
    path = str(tmp_path / "vocab.txt")
    assert write_vocabulary(path, word_counts(CATALOG)) == len(word_counts(CATALOG))
    loaded = Speller.load(path)
    assert len(loaded) == len(word_counts(CATALOG))
    assert loaded.rewrite("outdoor ceilikng fan") == "outdoor ceiling fan"
    bad = tmp_path / "bad.txt"
    bad.write_text("# dpsr speller vocabulary 1\nfan\t3\nceiling 2\n")
    with pytest.raises(ValueError, match=r"bad.txt:3: expected <word><TAB><count>"):
        Speller.load(str(bad))
    bad.write_text("fan\t3\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: not a speller vocabulary"):
        Speller.load(str(bad))
    bad.write_text("# dpsr speller vocabulary 1\nfan\t3\nfan\t2\n")
    with pytest.raises(ValueError, match="'fan' is given twice"):
        Speller.load(str(bad))
    with pytest.raises(ValueError, match="cannot read"):
        Speller.load(str(tmp_path / "missing.txt"))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_distance"):
        Speller({"a": 1}, SpellerConfig(max_distance=3))
    with pytest.raises(ValueError, match="long_word"):
        Speller({"a": 1}, SpellerConfig(long_word=0))


def test_the_op_corrects_as_the_module_does(tmp_path):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from dpsr_tf.tokenization.spell_op import spell_correct
    path = str(tmp_path / "vocab.txt")
    write_vocabulary(path, word_counts(CATALOG))
    queries = ["outdoor ceilikng fan", "Ceiling  FAN!", "snowblower 6ft", "手机 ceilng", ""]
    corrected, changed = spell_correct(tf.constant(queries), tf.constant(path))
    assert [t.decode() for t in corrected.numpy()] == Speller.load(path).correct(queries)
    assert changed.numpy().tolist() == [True, False, True, True, False]
    with pytest.raises(tf.errors.InvalidArgumentError, match="cannot read speller vocabulary"):
        spell_correct(tf.constant(["x"]), tf.constant(str(tmp_path / "missing.txt")))
    # Eager calls skip the shape function: the kernel itself refuses, naming the input.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Dpsr>SpellCorrect: queries "
                       r"must be a vector \[batch\], got shape \[1,1\]"):
        spell_correct(tf.constant([["x"]]), tf.constant(path))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Dpsr>SpellCorrect: "
                       r"vocabulary_file must be a scalar, got shape \[1\]"):
        spell_correct(tf.constant(["x"]), tf.constant([path]))
