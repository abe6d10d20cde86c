"""The FAISS build (tools/build_faiss.py, at build time) and the op library's start-up check
(dpsr_tf/op_library.py, at run time) must agree on which CPU flags the avx2 build needs and on
how a CPU's flags are read; the tools are not part of the installed package, so the contract is
kept by this test rather than by an import."""
import importlib.util
import os

import pytest

from dpsr_tf import op_library

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _build_faiss():
    spec = importlib.util.spec_from_file_location(
        "build_faiss", os.path.join(ROOT, "tools", "build_faiss.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_sides_require_the_same_flags_for_the_avx2_build():
    assert op_library._AVX2_CPU_FLAGS == _build_faiss().AVX2_CPU_FLAGS  # pylint: disable=protected-access


def test_both_sides_read_the_same_flags_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\n"
                       "flags\t\t: fpu sse2 avx2 fma popcnt\nbugs\t\t: spectre_v1\n")
    want = {"fpu", "sse2", "avx2", "fma", "popcnt"}
    assert op_library._cpu_flags(str(cpuinfo)) == want  # pylint: disable=protected-access
    assert _build_faiss().cpu_flags(str(cpuinfo)) == want
    missing = str(tmp_path / "absent")
    assert op_library._cpu_flags(missing) == set() == _build_faiss().cpu_flags(missing)  # pylint: disable=protected-access
    # A CPU without f16c is refused at start by a library holding the avx2 build.
    with pytest.raises(ImportError, match="this CPU lacks f16c"):
        op_library.check_cpu({"opt_level": "avx2"}, want)
