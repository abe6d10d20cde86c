"""The Bazel build (WORKSPACE, BUILD.bazel; docs/bazel.md) against the setup.py build.

One `tools/bazel/bazel.sh test //...` builds every target (tokenizer core, op library as
cc_library and as .so, pybind11 module) and runs the C++ unit tests; the Bazel server is shut
down when the module ends. Then the Bazel-built op library and pybind11 module must give the
same tokens as the setup.py-built ones (`make build`) on a few hundred seeded samples: English,
Chinese, emoji, other scripts and invalid UTF-8, in hashing and vocabulary mode. Both op
libraries register the same op names, so each runs in its own process (tokenize_worker.py).
"""
import base64
import dataclasses
import glob
import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from dpsr_tf.tokenization.config import TokenizerConfig
from dpsr_tf.tokenization.vocab import build_vocabulary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BAZEL = os.path.join(ROOT, "tools", "bazel", "bazel.sh")
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenize_worker.py")
BUILD_TIMEOUT_S = 1800  # a fresh machine compiles everything on 2 cores (about 2 minutes)


def _bazel(*args, timeout=BUILD_TIMEOUT_S, log=None):
    """Runs tools/bazel/bazel.sh; returns (exit code, combined output)."""
    proc = subprocess.run([BAZEL, *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if log:
        with open(log, "w") as f:
            f.write(proc.stdout)
    return proc.returncode, proc.stdout


def _tail(text, lines=60):
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def bazel_build(tmp_path_factory):
    """Builds and tests //... once; yields (bazel-bin, test output); shuts Bazel down after."""
    if subprocess.run(["bash", "-c", "command -v bazel"], stdout=subprocess.DEVNULL).returncode:
        pytest.fail("bazel is not installed; run tools/bootstrap.sh --test (installs Debian's "
                    "bazel-bootstrap from tools/apt-packages-test.txt; make test runs it)")
    log = tmp_path_factory.mktemp("bazel") / "bazel-test.log"
    try:
        code, test_out = _bazel("test", "//...", log=log)
        assert code == 0, f"bazel test //... failed (exit {code}, log {log}):\n{_tail(test_out)}"
        code, out = _bazel("info", "bazel-bin", timeout=300)
        assert code == 0, f"bazel info failed:\n{_tail(out)}"
        yield out.strip().splitlines()[-1], test_out
    finally:
        _bazel("shutdown", timeout=120)


@pytest.fixture(scope="module")
def bazel_bin(bazel_build):
    return bazel_build[0]


def _sources_bzl():
    import ast

    with open(os.path.join(ROOT, "sources.bzl")) as f:
        tree = ast.parse(f.read())
    return {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
            if isinstance(n, ast.Assign)}


def test_every_cc_test_ran_and_passed(bazel_build):
    # The cores' unit tests and //tests/bazel:dpsr_ops_static_link_test.
    src = _sources_bzl()
    expected = (len(src["TOKENIZER_CORE_TESTS"]) + len(src["LEXICAL_CORE_TESTS"]) +
                len(src["TOPK_CORE_TESTS"]) + len(src["FAIR_GATE_CORE_TESTS"]) + 1)
    summary = re.search(r"out of (\d+) tests?: (\d+) tests? pass", bazel_build[1])
    assert summary, _tail(bazel_build[1])
    assert (int(summary.group(1)), int(summary.group(2))) == (expected, expected)


def test_libraries_are_built(bazel_bin):
    for name in ("_dpsr_ops.so", "_tokenizer.so", "_lexical.so"):
        assert os.path.isfile(os.path.join(bazel_bin, name)), f"{name} not in {bazel_bin}"
    # An alwayslink library is archived as .lo (.pic.lo in some Bazel versions).
    for pattern in ("libdpsr_ops*.lo", "libtokenizer_core*.a", "liblexical_core*.a"):
        assert glob.glob(os.path.join(bazel_bin, pattern)), f"no {pattern} in {bazel_bin}"


def _bazel_srcs(target):
    code, out = _bazel("cquery", f"labels(srcs, {target})", "--output=label", timeout=600)
    assert code == 0, _tail(out)
    labels = [line.split()[0] for line in out.splitlines() if line.startswith("//:")]
    return sorted(label[len("//:"):] for label in labels if label.endswith(".cc"))


def test_bazel_compiles_the_files_setup_py_compiles(bazel_bin):
    from distutils.core import run_setup  # setup.py's own view of its extensions

    dist = run_setup(os.path.join(ROOT, "setup.py"), stop_after="init")
    setup_srcs = {ext.name.rsplit(".", 1)[-1]: sorted(ext.sources) for ext in dist.ext_modules}
    assert set(setup_srcs) == {"_dpsr_ops", "_tokenizer", "_lexical"}, setup_srcs
    assert _bazel_srcs("//:dpsr_ops") == setup_srcs["_dpsr_ops"]
    assert _bazel_srcs("//:_tokenizer.so") == setup_srcs["_tokenizer"]
    assert _bazel_srcs("//:_lexical.so") == setup_srcs["_lexical"]


def _samples(seed=20240607):
    """A few hundred texts as raw bytes: several scripts, emoji, invalid UTF-8, edge sizes."""
    rng = random.Random(seed)
    words = ["apple", "iPhone", "case", "USB-C", "charger", "running", "shoes", "Nike",
             "4K", "tv", "organic", "Green", "tea", "laptop", "bag", "13.3in", "kids", "toy"]
    han = "苹果手机壳华为充电器运动鞋男女儿童玩具有机绿茶笔记本电脑包京东自营"
    other = ["Привет мир", "Ελληνικά", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ１２３", "カタカナ ひらがな",
             "한국어 키보드", "Ünïcödé façade", "naïve café"]
    emoji = ["😀", "🎉", "👍🏽", "👨‍👩‍👧", "🇨🇳", "❤️", "🔥"]
    invalid = [b"\xff", b"\xe6\x89", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80\x80abc",
               b"\xf4\x90\x80\x80", "手机".encode()[:-1], b"ok\xfe\xfdok"]
    texts = [b"", b" ", b"\t\n", "x".encode() * 20000, ("a" * 100 + " b").encode()]
    for _ in range(90):
        texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))).encode())
    for _ in range(90):
        texts.append("".join(rng.choice(han) for _ in range(rng.randint(1, 12))).encode())
    for _ in range(60):
        parts = [rng.choice(words), rng.choice(han) * rng.randint(1, 3), rng.choice(emoji),
                 rng.choice(other)]
        rng.shuffle(parts)
        texts.append(" ".join(parts[:rng.randint(1, 4)]).encode())
    for _ in range(60):
        text = rng.choice(words).encode() + rng.choice(invalid) + rng.choice(han).encode()
        texts.append(text if rng.random() < 0.5 else rng.choice(invalid) + text)
    for _ in range(30):
        texts.append(bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))))
    texts += [e.encode() for e in emoji] + [o.encode() for o in other]
    return texts


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("samples")
    texts = _samples()
    vocab = build_vocabulary(texts[:250], TokenizerConfig(), str(tmp / "vocab.txt"), min_count=2)
    configs = [
        TokenizerConfig(),
        TokenizerConfig(word_bigrams=False, cjk_unigrams=False, num_buckets=997, max_tokens=16,
                        max_input_bytes=64, max_word_chars=5),
        dataclasses.replace(vocab, num_oov_buckets=31),
    ]
    path = tmp / "samples.json"
    path.write_text(json.dumps({
        "texts": [base64.b64encode(t).decode() for t in texts],
        "configs": [c.to_json() for c in configs],
    }))
    return path, len(texts), len(configs)


@pytest.fixture(scope="module")
def run_worker(sample_file, tmp_path_factory):
    """run_worker(kind, library) -> the worker's outputs on the samples (cached per library)."""
    cache = {}
    tmp = tmp_path_factory.mktemp("worker")

    def run(kind, library):
        if (kind, library) not in cache:
            out = tmp / f"{len(cache)}.npz"
            env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
            proc = subprocess.run(
                [sys.executable, WORKER, kind, library, str(sample_file[0]), str(out)],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                timeout=300)
            assert proc.returncode == 0, f"{kind} worker on {library}:\n{_tail(proc.stdout)}"
            cache[kind, library] = dict(np.load(out, allow_pickle=True))
        return cache[kind, library]

    return run


def _setup_py_build(pattern):
    found = sorted(glob.glob(os.path.join(ROOT, "dpsr_tf", pattern)))
    assert found, f"no dpsr_tf/{pattern}: run `make build` first"
    return found[0]


@pytest.mark.parametrize("kind,bazel_name,setup_pattern", [
    ("op", "_dpsr_ops.so", "_dpsr_ops*.so"),
    ("pybind11", "_tokenizer.so", "_tokenizer*.so"),
])
def test_bazel_build_gives_same_tokens_as_setup_py(bazel_bin, sample_file, run_worker, kind,
                                                   bazel_name, setup_pattern):
    _, num_texts, num_configs = sample_file
    ours = run_worker(kind, os.path.join(bazel_bin, bazel_name))
    ref = run_worker(kind, _setup_py_build(setup_pattern))
    for i in range(num_configs):
        splits = ref[f"splits_{i}"]
        assert splits.shape == (num_texts + 1,) and splits[-1] > num_texts  # non-trivial
        np.testing.assert_array_equal(ours[f"splits_{i}"], splits, err_msg=f"config {i}")
        np.testing.assert_array_equal(ours[f"ids_{i}"], ref[f"ids_{i}"], err_msg=f"config {i}")
    if kind == "op":
        assert len(ref["op_defs"]) >= 1
        assert list(ours["op_defs"]) == list(ref["op_defs"]), "the two libraries register " \
            "different Dpsr> ops or op signatures"


def test_static_link_registers_the_ops_of_setup_py_library(bazel_bin, run_worker):
    """What tensorflow_model_server gets: every op of the library, each with a kernel."""
    from tensorflow.core.framework import op_def_pb2

    ref = run_worker("op", _setup_py_build("_dpsr_ops*.so"))["op_defs"]
    ref_names = [op_def_pb2.OpDef.FromString(d).name for d in ref]
    binary = os.path.join(bazel_bin, "tests", "bazel", "dpsr_ops_static_link_test")
    proc = subprocess.run([binary], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout
    linked = dict(line.split("\t") for line in proc.stdout.splitlines() if "\t" in line)
    assert sorted(linked) == sorted(ref_names)
    assert all(int(n) >= 1 for n in linked.values()), linked
