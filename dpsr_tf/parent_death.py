"""A child process that exits with the process that started it (Linux PR_SET_PDEATHSIG).

The parent sets DPSR_DIE_WITH_PARENT=<its pid> in the child's environment (`child_env`); the
`dpsr` entry point calls `apply_from_env()` first thing. The request travels in the environment,
not as a `preexec_fn`, because running Python between fork and exec in a parent with gRPC and
TensorFlow threads can hang in the fork handlers (seen: a test parent stuck in fork for
minutes); without a preexec_fn, subprocess spawns with vfork, which runs no handlers.
"""
import ctypes
import os
import signal
from typing import Dict, Mapping

ENV_VAR = "DPSR_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def child_env(env: Mapping[str, str]) -> Dict[str, str]:
    """`env` plus the request that the child dies with this process."""
    return dict(env, **{ENV_VAR: str(os.getpid())})


def apply_from_env() -> None:
    """Honours the request, if any: SIGTERM when the parent dies; exits at once when it is
    already gone. Removes the variable so this process's own children do not inherit it."""
    value = os.environ.pop(ENV_VAR, None)
    if not value:
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the parent's stop() is the only cleanup
        return
    if str(os.getppid()) != value:  # the parent died before the request took effect
        raise SystemExit(f"{ENV_VAR}: parent {value} is gone")
