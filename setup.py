"""Builds DPSR-TF: the pybind11 tokenizer module and the TensorFlow op library.

    python setup.py build_ext --inplace   # what `make build` runs

The C++ source lists come from sources.bzl, the same file Bazel reads. Compiler and linker
flags for the op library come from tf.sysconfig, never hard-coded (TensorFlow's ABI and C++
standard are whatever the installed wheel was built with). FAISS is linked statically from
a build for this CPU (tools/build_faiss.py: Debian's source package of the wheel's FAISS version
at FAISS_OPT_LEVEL=avx2, or generic on a CPU without AVX2), cached outside the clone; setup.py
runs that script, so `make build` needs no manual step. DPSR_FAISS_PREFIX=<dir> (holding
include/faiss and buildinfo.json) uses another build instead.
"""
import ast
import copy
import json
import os
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources():
    """Evaluates the list assignments of sources.bzl."""
    with open(os.path.join(ROOT, "sources.bzl")) as f:
        tree = ast.parse(f.read(), "sources.bzl")
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def _runtime_requirements():
    """The pinned runtime stack: requirements.txt up to its test/benchmark section."""
    reqs = []
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        for line in f:
            line = line.strip()
            if line.startswith("pytest") or line.startswith("# Baselines"):
                break
            if line and not line.startswith("#"):
                reqs.append(line)
    return reqs


def _faiss_build():
    """(prefix, buildinfo) of the FAISS build the op library links (tools/build_faiss.py)."""
    prefix = os.environ.get("DPSR_FAISS_PREFIX")
    if not prefix:
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "build_faiss.py")],
                              stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit("error: tools/build_faiss.py failed (its messages are above); the "
                             "op library needs FAISS built from Debian's source package")
        prefix = proc.stdout.strip().splitlines()[-1]
    info_path = os.path.join(prefix, "buildinfo.json")
    try:
        with open(info_path) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: DPSR_FAISS_PREFIX={prefix}: cannot read {info_path} ({e}); "
                         "point it at a directory made by tools/build_faiss.py") from None
    return prefix, info


SRC = _sources()
COMMON_FLAGS = ["-O2", "-fvisibility=hidden", "-Wall", "-Wno-sign-compare"]


class BuildExt(build_ext):
    """Adds toolchain flags that need imports (pybind11, TensorFlow) at build time only, and
    compiles each extension into its own folder."""

    def build_extension(self, ext):
        # The core sources (asset_snapshot.cc, lexical_index.cc, the tokenizer) are compiled
        # for the op library with TensorFlow's flags and for the pybind11 modules without: one
        # shared object path let a parallel build (-j 2) link _lexical with the op library's
        # object (undefined symbol at import, seen in a fresh clone). A copy of the command per
        # extension, because -j builds extensions in threads.
        command = copy.copy(self)
        command.build_temp = os.path.join(self.build_temp, ext.name.rsplit(".", 1)[-1])
        super(BuildExt, command).build_extension(ext)

    def build_extensions(self):
        import pybind11
        import tensorflow as tf

        for ext in self.extensions:
            if ext.name in ("dpsr_tf._tokenizer", "dpsr_tf._lexical"):
                ext.include_dirs.append(pybind11.get_include())
                ext.extra_compile_args += ["-std=c++17"]
            elif ext.name == "dpsr_tf._dpsr_ops":
                ext.extra_compile_args += tf.sysconfig.get_compile_flags()
                ext.extra_link_args += tf.sysconfig.get_link_flags()
                lib_dir = next(f[2:] for f in tf.sysconfig.get_link_flags() if f.startswith("-L"))
                ext.extra_link_args.append("-Wl,-rpath," + lib_dir)
                # FAISS built for this CPU (tools/build_faiss.py), static; its headers come
                # before /usr/include. The op is compiled with the instruction-set flags of
                # FAISS's own avx2 target (faiss/CMakeLists.txt), so inline FAISS code in the
                # headers takes the same paths as the library. --exclude-libs keeps FAISS's
                # symbols private, so they never interpose on the faiss-cpu wheel's.
                prefix, info = _faiss_build()
                library = os.path.join(prefix, info["library"])
                ext.include_dirs.insert(0, os.path.join(prefix, "include"))
                ext.extra_compile_args += list(info.get("compile_flags", []))
                # The IVF-SQ8 scan (ivf_sq8_scan.cc) searches a batch's queries in parallel.
                ext.extra_compile_args.append("-fopenmp")
                ext.depends.append(library)
                ext.extra_link_args += ["-Wl,--exclude-libs,ALL", library, "-lopenblas",
                                        "-fopenmp"]
                self._faiss_info = info
        super().build_extensions()
        info = getattr(self, "_faiss_info", None)
        if info is not None:
            # Read by dpsr_tf/op_library.py before loading the library: refuses an avx2 build
            # on a CPU without AVX2 with a clear error instead of an illegal instruction.
            # Beside the built library and beside the in-place copy (setuptools builds in
            # build/ and copies only the .so into the source tree for --inplace).
            built = os.path.dirname(self.get_ext_fullpath("dpsr_tf._dpsr_ops"))
            for folder in {built, os.path.join(ROOT, "dpsr_tf")}:
                with open(os.path.join(folder, "_dpsr_ops.faiss.json"), "w") as f:
                    json.dump({k: info[k] for k in ("faiss_version", "debian_source_version",
                                                    "opt_level", "compile_flags")}, f, indent=1)
                    f.write("\n")


def _ext(name, sources, depends, libraries=()):
    return Extension(
        name,
        sources=sources,
        depends=depends,
        include_dirs=[ROOT],
        extra_compile_args=list(COMMON_FLAGS),
        libraries=list(libraries),
        language="c++",
    )


setup(
    name="dpsr-tf",
    version="0.1.0",
    description="DPSR (Deep Personalized and Semantic Retrieval) on TensorFlow",
    packages=find_packages(include=["dpsr_tf*"]),
    python_requires=">=3.11,<3.12",
    install_requires=_runtime_requirements(),
    ext_modules=[
        _ext(
            "dpsr_tf._tokenizer",
            SRC["TOKENIZER_CORE_SRCS"] + SRC["TOKENIZER_PYBIND_SRCS"],
            SRC["TOKENIZER_CORE_HDRS"],
        ),
        _ext(
            "dpsr_tf._lexical",
            SRC["LEXICAL_CORE_SRCS"] + SRC["LEXICAL_PYBIND_SRCS"],
            SRC["LEXICAL_CORE_HDRS"],
        ),
        _ext(
            "dpsr_tf._dpsr_ops",
            SRC["TOKENIZER_CORE_SRCS"] + SRC["OP_LIBRARY_SRCS"],
            SRC["TOKENIZER_CORE_HDRS"] + SRC["OP_LIBRARY_HDRS"],
        ),
    ],
    cmdclass={"build_ext": BuildExt},
    entry_points={"console_scripts": ["dpsr = dpsr_tf.cli.main:run"]},
)
