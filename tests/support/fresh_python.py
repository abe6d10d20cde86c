"""Running a script in a fresh Python process: a servable must load and answer without the
test process's imports, graphs or op registrations."""
import json
import os
import subprocess
import sys
import textwrap

from tests.support import waiting

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_fresh(script: str, **env_vars: str) -> object:
    """Runs the dedented `script` with the repository on the path (and `env_vars` in its
    environment); returns the JSON value of its last line of output. Fails the test, with the
    script's stderr, if it fails."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", **env_vars)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                          capture_output=True, text=True, timeout=waiting.SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def serving_default_answers(path: str, queries, k: int, outputs) -> dict:
    """The servable at `path` (a version directory), loaded in a fresh process as TF Serving
    loads it, asked serving_default once for `queries` at `k`: {output alias: nested list,
    strings decoded}."""
    return run_fresh(f"""
    import json
    from tests.support.tf1_servable import Tf1Servable
    out = Tf1Servable({path!r}).call("serving_default", {{"query": {list(queries)!r}, "k": {k}}},
                                     {list(outputs)!r})
    print(json.dumps({{k: (v.astype(str).tolist() if v.dtype == object else v.tolist())
                      for k, v in out.items()}}))
    """)
