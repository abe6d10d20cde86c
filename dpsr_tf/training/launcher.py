"""A real multi-process TensorFlow cluster on loopback (chief, workers, ps, evaluator).

Each task is a separate OS process running the same command with its own TF_CONFIG; tasks talk
over gRPC on free localhost ports exactly as they would across hosts. Used by `dpsr launch-local`
and by the distributed tests (which kill and restart single tasks).
"""
import json
import os
import signal
import subprocess
import time
from typing import Dict, List, Optional, Sequence, Tuple

from dpsr_tf.training import tf_config

Task = Tuple[str, int]


def task_name(task: Task) -> str:
    return f"{task[0]}-{task[1]}"


class LocalCluster:
    """Starts, watches, kills and restarts the tasks of a loopback cluster.

    Args:
      command: argv of one task (e.g. [python, -m, dpsr_tf.cli, train, --flagfile=F]); TF_CONFIG
        is added to its environment.
      num_workers: workers besides the chief.
      num_ps: parameter servers (>= 1 when num_workers > 0).
      evaluator: also run an evaluator task.
      log_dir: <task>.log per task (appended across restarts) and tf_config.json.
      env: extra environment for every task.
    """

    def __init__(self, command: Sequence[str], *, num_workers: int, num_ps: int,
                 evaluator: bool, log_dir: str, env: Optional[Dict[str, str]] = None,
                 host: str = "localhost"):
        if num_workers > 0 and num_ps < 1:
            raise ValueError(f"workers={num_workers} need at least one parameter server "
                             "(--ps >= 1): between-graph replication keeps variables on ps")
        self.command = list(command)
        self.cluster = tf_config.loopback_cluster(num_workers, num_ps, host)
        self.evaluator = evaluator
        self.log_dir = log_dir
        self.env = dict(env or {})
        self.procs: Dict[Task, subprocess.Popen] = {}
        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(log_dir, "tf_config.json"), "w", encoding="utf-8") as f:
            json.dump({task_name(t): json.loads(self.tf_config(t)) for t in self.tasks()}, f,
                      indent=2)

    def tasks(self) -> List[Task]:
        """Every task: ps first (the others connect to them), chief, workers, evaluator."""
        out = [("ps", i) for i in range(len(self.cluster.get("ps", [])))]
        out.append(("chief", 0))
        out += [("worker", i) for i in range(len(self.cluster.get("worker", [])))]
        if self.evaluator:
            out.append(("evaluator", 0))
        return out

    def tf_config(self, task: Task) -> str:
        return tf_config.make(self.cluster, task[0], task[1])

    def log_path(self, task: Task) -> str:
        return os.path.join(self.log_dir, f"{task_name(task)}.log")

    def start(self) -> None:
        for task in self.tasks():
            self.start_task(task)

    def start_task(self, task: Task) -> subprocess.Popen:
        """Starts (or restarts) one task; its output is appended to its log."""
        old = self.procs.get(task)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{task_name(task)} is still running (pid {old.pid})")
        env = dict(os.environ)
        env.update(self.env)
        env["TF_CONFIG"] = self.tf_config(task)
        log = open(self.log_path(task), "ab")  # pylint: disable=consider-using-with
        log.write(f"\n=== start {task_name(task)} at {time.ctime()} ===\n".encode())
        log.flush()
        proc = subprocess.Popen(self.command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        log.close()
        self.procs[task] = proc
        return proc

    def kill_task(self, task: Task, sig: int = signal.SIGKILL) -> int:
        """Sends `sig` to one task's process (SIGKILL by default) and waits for it."""
        proc = self.procs[task]
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait()

    def running(self, task: Task) -> bool:
        proc = self.procs.get(task)
        return proc is not None and proc.poll() is None

    def wait(self, timeout: Optional[float] = None, poll_secs: float = 0.5) -> Dict[str, int]:
        """Waits for the chief, workers and evaluator to exit, then stops the ps tasks.

        A training task that fails stops the whole cluster (the others would wait forever).

        Returns:
          task name -> exit code (parameter servers report the code of their stop).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        finite = [t for t in self.procs if t[0] != "ps"]
        while True:
            codes = {t: self.procs[t].poll() for t in finite}
            failed = [t for t, c in codes.items() if c not in (None, 0)]
            if failed or all(c is not None for c in codes.values()):
                break
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(poll_secs)
        self.stop()
        return {task_name(t): p.returncode for t, p in self.procs.items()}

    def stop(self, grace_secs: float = 5.0) -> None:
        """Terminates every task still running (SIGTERM, then SIGKILL after grace_secs)."""
        alive = [p for p in self.procs.values() if p.poll() is None]
        for proc in alive:
            proc.terminate()
        end = time.monotonic() + grace_secs
        for proc in alive:
            try:
                proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
