"""Builds DPSR-TF: the pybind11 tokenizer module and the TensorFlow op library.

    python setup.py build_ext --inplace   # what `make build` runs

The C++ source lists come from sources.bzl, the same file Bazel reads. Compiler and linker
flags for the op library come from tf.sysconfig, never hard-coded (TensorFlow's ABI and C++
standard are whatever the installed wheel was built with). FAISS is linked statically from
Debian's libfaiss-dev (tools/apt-packages.txt).
"""
import ast
import os

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


SRC = _sources()
COMMON_FLAGS = ["-O2", "-fvisibility=hidden", "-Wall", "-Wno-sign-compare"]


class BuildExt(build_ext):
    """Adds toolchain flags that need imports (pybind11, TensorFlow) at build time only."""

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
                # FAISS from Debian's static libfaiss.a; --exclude-libs keeps its symbols
                # private, so they never interpose on the faiss-cpu wheel's in one process.
                ext.extra_link_args += ["-Wl,--exclude-libs,ALL", "-l:libfaiss.a", "-lopenblas",
                                        "-fopenmp"]
        super().build_extensions()


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
    packages=find_packages(include=["dpsr_tf*", "export*", "serving*"]),
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
