"""dpsr_tf/parent_death.py: a child started with child_env() exits when its parent dies."""
import os
import subprocess
import sys

import pytest

from dpsr_tf import parent_death
from tests.support import waiting

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The middle process starts a child that honours the request and sleeps, prints its pid, and
# exits: the child must not outlive it.
MIDDLE = r"""
import subprocess, sys
from dpsr_tf import parent_death
child = subprocess.Popen(
    [sys.executable, "-c",
     "from dpsr_tf import parent_death; parent_death.apply_from_env(); "
     "import time; print('ready', flush=True); time.sleep(600)"],
    env=parent_death.child_env(__import__("os").environ), stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "ready"
print(child.pid, flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_child_exits_with_its_parent():
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", MIDDLE], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    child = int(out.stdout.strip().splitlines()[-1])
    try:
        waiting.wait_until(lambda: not _alive(child), f"child {child} to exit with its parent")
    finally:
        if _alive(child):
            os.kill(child, 9)


def test_request_is_not_inherited_and_absent_parent_exits():
    assert parent_death.child_env({"A": "1"}) == {"A": "1",
                                                  parent_death.ENV_VAR: str(os.getpid())}
    # In a child of its own (the request changes the process that applies it). Pid 1 is not
    # the child's parent: "already gone".
    code = ("import os; from dpsr_tf import parent_death; "
            "parent_death.apply_from_env() if os.environ.get('GONE') else None; "
            "os.environ['GONE'] = ''; "
            "print(parent_death.ENV_VAR in os.environ)")
    env = dict(os.environ, PYTHONPATH=ROOT, GONE="")
    env.pop(parent_death.ENV_VAR, None)
    absent = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert absent.returncode == 0 and absent.stdout.strip() == "False"  # no request: nothing
    gone = subprocess.run([sys.executable, "-c", code],
                          env=dict(env, GONE="1", **{parent_death.ENV_VAR: "1"}),
                          capture_output=True, text=True, timeout=120)
    assert gone.returncode == 1 and "parent 1 is gone" in gone.stderr, gone.stderr
    alive = subprocess.run(
        [sys.executable, "-c", "import os; from dpsr_tf import parent_death; "
         "parent_death.apply_from_env(); print(parent_death.ENV_VAR in os.environ)"],
        env=parent_death.child_env(env), capture_output=True, text=True, timeout=120)
    assert alive.returncode == 0 and alive.stdout.strip() == "False"  # not inherited further
