"""The unit vocabulary (golden keys and ids) and the rewrite table's format and errors."""
import numpy as np
import pytest

from dpsr_tf.rewriting import table, units


def test_vocab_orders_units_by_count_then_key_and_round_trips():
    vocab = units.UnitVocab.build(["Cordless Drill", "drill bit", "手机 drill"], 10, min_count=1)
    assert vocab.keys == ["<pad>", "<s>", "</s>", "<unk>", "w:drill", "c:手", "c:机", "w:bit",
                          "w:cordless"]
    ids = vocab.encode(["drill 手机 saw", "bit"], max_len=4)
    np.testing.assert_array_equal(ids, [[4, 5, 6, 2], [7, 2, 0, 0]])
    assert vocab.decode([4, 5, 6, 2, 7]) == "drill 手机"
    assert vocab.decode([3, 8, 4]) == "cordless drill"


def test_vocab_file_round_trip_and_bad_file(tmp_path):
    vocab = units.UnitVocab.build(["a b", "a"], 6, min_count=1)
    vocab.save(str(tmp_path / "u.txt"))
    assert units.UnitVocab.load(str(tmp_path / "u.txt")).keys == vocab.keys
    (tmp_path / "bad.txt").write_text("w:a\n")
    with pytest.raises(ValueError, match="starts with"):
        units.UnitVocab.load(str(tmp_path / "bad.txt"))


def test_table_round_trip_keys_and_duplicates(tmp_path):
    path = str(tmp_path / "t.tsv")
    assert table.write_table(path, [("Cordless  Drill", [("drill", -0.5), ("driver", -1.25)]),
                                    ("saw", [])]) == 2
    with open(path, "a", encoding="utf-8") as f:
        f.write("cordless drill\tdrill\t-9\n")
    got = table.read_table(path)
    assert got == {"cordless drill": [("drill", -0.5), ("driver", -1.25)]}
    assert table.normalize_query("  A\tB  c ") == "a b c"


@pytest.mark.parametrize("line,match", [("q\tr\n", "expected"), ("q\tr\tx\n", "not a number"),
                                        ("\tr\t1\n", "expected")])
def test_bad_table_lines_name_file_and_line(tmp_path, line, match):
    path = tmp_path / "t.tsv"
    path.write_text("# header\n" + line)
    with pytest.raises(ValueError, match=f"t.tsv:2: .*{match}"):
        table.read_table(str(path))
