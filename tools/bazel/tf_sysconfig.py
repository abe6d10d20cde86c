"""Prints, as JSON, what a C++ build needs from the installed TensorFlow and Python.

Run by the Bazel repository rule in tools/bazel/repositories.bzl with the project's venv
python; never hard-codes a path or an ABI flag: everything comes from tf.sysconfig, pybind11
and sysconfig of the interpreter that runs it.

    python tools/bazel/tf_sysconfig.py [--out FILE]
    {"tf_include": ..., "tf_lib_dir": ..., "tf_framework_lib": "libtensorflow_framework.so.2",
     "tf_defines": ["_GLIBCXX_USE_CXX11_ABI=1", ...], "tf_copts": ["--std=c++17"], ...}
"""
import json
import os
import sys
import sysconfig


def _split_compile_flags(flags):
    """tf.sysconfig compile flags -> (include dirs, defines, other copts)."""
    includes, defines, copts = [], [], []
    for flag in flags:
        if flag.startswith("-I"):
            includes.append(flag[2:])
        elif flag.startswith("-D"):
            defines.append(flag[2:])
        else:
            copts.append(flag)
    return includes, defines, copts


def _split_link_flags(flags):
    """tf.sysconfig link flags -> (library dir, framework library file name)."""
    lib_dir = lib = None
    for flag in flags:
        if flag.startswith("-L"):
            lib_dir = flag[2:]
        elif flag.startswith("-l:"):
            lib = flag[3:]
        elif flag.startswith("-l"):
            lib = "lib" + flag[2:] + ".so"
    if not lib_dir or not lib:
        raise SystemExit(f"tf_sysconfig.py: cannot read the library from link flags {flags}")
    return lib_dir, lib


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import pybind11
        import tensorflow as tf
    except ImportError as e:
        print(f"tf_sysconfig.py: {sys.executable} cannot import {e.name}; point DPSR_PYTHON at "
              "the project's venv python (tools/bootstrap.sh prints the venv)", file=sys.stderr)
        return 1
    includes, defines, copts = _split_compile_flags(tf.sysconfig.get_compile_flags())
    lib_dir, lib = _split_link_flags(tf.sysconfig.get_link_flags())
    if len(includes) != 1:
        print(f"tf_sysconfig.py: expected one -I in tf.sysconfig flags, got {includes}",
              file=sys.stderr)
        return 1
    info = {
        "python": sys.executable,
        "tf_version": tf.__version__,
        "tf_include": includes[0],
        "tf_defines": defines,
        "tf_copts": copts,
        "tf_lib_dir": lib_dir,
        "tf_framework_lib": lib,
        "pybind11_include": pybind11.get_include(),
        "python_include": sysconfig.get_paths()["include"],
        "python_ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
    }
    text = json.dumps(info, indent=1) + "\n"
    if len(sys.argv) == 3 and sys.argv[1] == "--out":
        with open(sys.argv[2], "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
