"""The `dpsr` command line for tokenization, run as a real process."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")


def dpsr(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "dpsr_tf.cli", *args], env=ENV, input=stdin,
                          capture_output=True, text=True)


def test_tokenize_prints_features_and_ids():
    out = dpsr("tokenize", "--text=Ａ 手机", "--num_buckets=1000")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "'Ａ 手机': 5 features"
    assert [line.split("\t")[0].strip() for line in lines[1:]] == [
        "w:a", "t:#a#", "c:手", "c:机", "cc:手机"]
    assert all(0 <= int(line.split("\t")[1]) < 1000 for line in lines[1:])


def test_tokenize_reads_stdin_and_honours_feature_switches():
    out = dpsr("tokenize", "--features=w", "--noids", stdin="red apple\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1:] == ["  w:red", "  w:apple"]


def test_unknown_feature_kind_is_a_clear_error():
    out = dpsr("tokenize", "--features=w,zz", "--text=a")
    assert out.returncode != 0
    assert "unknown kinds ['zz']" in out.stderr


def test_vocab_builds_a_file(tmp_path):
    corpus = tmp_path / "texts.txt"
    corpus.write_text("red apple\nred apple\ngreen\n")
    vocab = tmp_path / "vocab.txt"
    out = dpsr("vocab", f"--input={corpus}", f"--output={vocab}", "--features=w,ww")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {"vocab_file": str(vocab), "size": 3}
    assert [line.split("\t")[0] for line in vocab.read_text().splitlines()[1:]] == [
        "w:apple", "w:red", "ww:red apple"]


def test_missing_input_file_is_a_clear_error(tmp_path):
    out = dpsr("vocab", f"--input={tmp_path}/none.txt", f"--output={tmp_path}/v.txt")
    assert out.returncode != 0 and "none.txt: no such file" in out.stderr


def test_unknown_subcommand_lists_the_subcommands():
    out = dpsr("frobnicate")
    assert out.returncode == 2
    assert "unknown subcommand 'frobnicate'" in out.stderr and "tokenize" in out.stderr
