"""Real multi-process parameter-server training on loopback (TF_CONFIG chief/worker/ps/...).

1 chief + 1 worker + 1 ps + evaluator trains, its loss falls and the evaluator's early stopping
ends it; killing the worker, and later the chief, with SIGKILL mid-run and restarting each
resumes from the last checkpoint: the global step continues and the job reaches its last step.
"""
import json
import os
import re
import signal
import subprocess

import tensorflow as tf

from dpsr_tf.model.model_dir import CONFIG_FILE
from dpsr_tf.training.launcher import LocalCluster
from tests.support import waiting

LOSS_LINE = re.compile(r"\] step (\d+): loss ([0-9.]+)")


def _losses(log_text):
    return [(int(s), float(l)) for s, l in LOSS_LINE.findall(log_text)]


def _ckpt_step(model_dir):
    path = tf.train.latest_checkpoint(model_dir)
    return int(path.rsplit("-", 1)[1]) if path else -1


def _progress(model_dir, log_paths):
    """What moves while a job works: its checkpoint step, the steps its tasks logged, and the
    size of their logs (start-up: imports, cluster connection)."""
    sizes, steps = [], []
    for path in log_paths:
        try:
            sizes.append(os.path.getsize(path))
            steps.append(max((s for s, _ in _losses(_read(path))), default=-1))
        except OSError:
            sizes.append(-1)
    return _ckpt_step(model_dir), tuple(steps), tuple(sizes)


def _no_task_failed(procs):
    def check():
        for task, proc in procs.items():
            if proc.poll() is not None and task[0] != "ps":
                raise AssertionError(f"{task} exited early with {proc.returncode}")
    return check


def _wait_for_checkpoint(model_dir, min_step, cluster):
    """The checkpoint step once it reaches min_step; fails when a training task fails or the
    job stops making progress (not after a fixed time: a loaded machine is slow, not stuck)."""
    logs = [cluster.log_path(t) for t in cluster.procs if t[0] != "ps"]
    return waiting.wait_until(
        lambda: (lambda step: step if step >= min_step else None)(_ckpt_step(model_dir)),
        f"a checkpoint at step >= {min_step}", progress=lambda: _progress(model_dir, logs),
        check=_no_task_failed(cluster.procs), poll_s=0.2)


def _wait_for_exit(model_dir, cluster):
    """Waits while the training tasks work until each has exited (then stops the ps tasks)
    and returns {task name: exit code}."""
    logs = [cluster.log_path(t) for t in cluster.procs if t[0] != "ps"]
    finite = [p for t, p in cluster.procs.items() if t[0] != "ps"]
    waiting.wait_until(
        lambda: all(p.poll() is not None for p in finite)
        or any(p.poll() not in (None, 0) for p in finite),
        "the training tasks' exit", progress=lambda: _progress(model_dir, logs), poll_s=0.5)
    return cluster.wait(timeout=0)


def _flagfile(path, model_flags, layout_dir, model_dir, steps, ckpt_steps):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(model_flags + [
            f"--layout_dir={layout_dir}", f"--model_dir={model_dir}", f"--train_steps={steps}",
            f"--save_checkpoints_steps={ckpt_steps}", "--eval_steps=2"]) + "\n")
    return path


def _read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def test_launch_local_trains_loss_falls_and_the_evaluator_stops_it(
        tiny_layout, tmp_path, task_env, tiny_model_flags, dpsr_command):
    """The default length rule on a cluster: the evaluator task evaluates checkpoints as they
    come and records the stop; the chief and the worker end their training on it; the
    checkpoint state names the best. A min_delta no metric can beat makes the stop certain
    after patience 1 (the first evaluation stays the best); the watched metric is full-corpus
    recall, which the evaluator computes from each checkpoint."""
    cap = 40_000
    model_dir = str(tmp_path / "model")
    launch = os.path.join(model_dir, "launch")
    # No --timeout_secs: the job is awaited while it makes progress (a loaded machine is slow).
    with open(tmp_path / "launch.err", "w+", encoding="utf-8") as err:
        proc = subprocess.Popen(
            dpsr_command("launch-local", "--workers=1", "--ps=1", "--evaluator",
                         f"--layout_dir={tiny_layout.layout_dir}", f"--model_dir={model_dir}",
                         f"--max_train_steps={cap}", "--eval_every_steps=400",
                         "--save_checkpoints_steps=400", "--eval_steps=2",
                         "--early_stopping_patience=1", "--early_stopping_min_delta=10",
                         "--early_stopping_metric=recall@100",
                         *tiny_model_flags),
            env=task_env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        log_paths = [os.path.join(launch, f"{name}.log")
                     for name in ("chief-0", "worker-0", "evaluator-0")]
        try:
            waiting.wait_until(lambda: proc.poll() is not None, "launch-local's exit",
                               progress=lambda: _progress(model_dir, log_paths), poll_s=0.5)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        err.seek(0)
        stderr = err.read()
    logs = {name: _read(os.path.join(launch, f"{name}.log"))
            for name in ("chief-0", "worker-0", "ps-0", "evaluator-0")}
    assert proc.returncode == 0, stderr[-2000:] + logs["chief-0"][-3000:]
    # Every task got its own TF_CONFIG; the chief wrote the resolved config.
    tf_configs = json.loads(_read(os.path.join(launch, "tf_config.json")))
    assert tf_configs["worker-0"]["task"] == {"type": "worker", "index": 0}
    assert set(tf_configs["ps-0"]["cluster"]) == {"chief", "worker", "ps"}
    resolved = json.loads(_read(os.path.join(model_dir, CONFIG_FILE)))
    assert resolved["model"]["embedding_partitions"] == 1       # one per ps
    assert resolved["cluster"]["ps"] == tf_configs["ps-0"]["cluster"]["ps"]
    # Both replicas trained against the shared parameters, and the loss fell.
    chief, worker = _losses(logs["chief-0"]), _losses(logs["worker-0"])
    assert chief and worker, logs["worker-0"][-3000:]
    losses = [l for _, l in sorted(chief + worker)]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.6 * first, losses
    # Global steps interleave: each replica's steps advance by more than its own 50.
    assert max(s for s, _ in chief) >= 600
    # The evaluator evaluated checkpoints (TensorBoard events in model_dir/eval), one per
    # stretch of 400 steps, and stopped at the second (patience 1).
    assert "Saving dict for global step" in logs["evaluator-0"]
    assert tf.io.gfile.glob(os.path.join(model_dir, "eval", "events.out.tfevents*"))
    record = json.loads(_read(os.path.join(model_dir, "early_stopping.json")))
    evaluated = [h["global_step"] for h in record["history"]]
    assert len(evaluated) == 2 and evaluated[0] // 400 < evaluated[1] // 400, evaluated
    assert record["stopped"]["reason"] == "no_improvement"
    assert all(0 <= h["recall@100"] <= 1 for h in record["history"])  # the evaluator's
    assert (record["stopped"]["step"], record["stopped"]["best_step"]) == (evaluated[1],
                                                                          evaluated[0])
    # The chief and the worker ended on the record, far from the cap, and the state names
    # the best (the chief's last save came after the evaluator's stop).
    assert "the evaluator recorded a stop" in logs["chief-0"]
    assert "the evaluator recorded a stop" in logs["worker-0"]
    assert max(s for s, _ in chief + worker) < cap
    assert tf.train.latest_checkpoint(model_dir).endswith(f"model.ckpt-{evaluated[0]}")


def _steps_since_restart(cluster, task):
    log = _read(cluster.log_path(task))
    return [s for s, _ in _losses(log.split(f"=== start {task[0]}-{task[1]}")[-1])]


def test_kill_and_restart_resumes_from_last_checkpoint(tiny_layout, tmp_path, task_env,
                                                       tiny_model_flags, dpsr_command):
    """One job, two failures: the worker is SIGKILLed and restarted, then (once the restarted
    worker trains) the chief; each restarted task continues from the shared global step, the
    chief by restoring the last checkpoint, and the job reaches its last step."""
    model_dir = str(tmp_path / "model")
    os.makedirs(model_dir)
    flagfile = _flagfile(str(tmp_path / "train.flags"), tiny_model_flags,
                         tiny_layout.layout_dir, model_dir,
                         steps=2400, ckpt_steps=200)
    cluster = LocalCluster(dpsr_command("train", f"--flagfile={flagfile}"), num_workers=1,
                           num_ps=1, evaluator=False, log_dir=str(tmp_path / "logs"),
                           env=task_env)
    worker, chief = ("worker", 0), ("chief", 0)
    logs = [cluster.log_path(t) for t in (worker, chief)]
    killed_at = {}
    with cluster:
        cluster.start()
        _wait_for_checkpoint(model_dir, 400, cluster)
        assert cluster.kill_task(worker, signal.SIGKILL) == -signal.SIGKILL
        killed_at[worker] = _ckpt_step(model_dir)   # the last checkpoint before the kill
        cluster.start_task(worker)
        # The chief goes down only once the restarted worker trains and a later checkpoint
        # exists, so each kill is checked on its own.
        waiting.wait_until(lambda: _steps_since_restart(cluster, worker) or None,
                           "a training step of the restarted worker",
                           progress=lambda: _progress(model_dir, logs),
                           check=_no_task_failed(cluster.procs), poll_s=0.2)
        _wait_for_checkpoint(model_dir, killed_at[worker] + 200, cluster)
        assert cluster.kill_task(chief, signal.SIGKILL) == -signal.SIGKILL
        killed_at[chief] = _ckpt_step(model_dir)
        assert killed_at[chief] < 2400, "training finished before the kill; raise train_steps"
        cluster.start_task(chief)
        codes = _wait_for_exit(model_dir, cluster)
    assert codes["chief-0"] == 0 and codes["worker-0"] == 0, codes
    assert _ckpt_step(model_dir) >= 2400                    # the job reached its last step
    for victim in (worker, chief):
        steps_after = _steps_since_restart(cluster, victim)
        assert steps_after, _read(cluster.log_path(victim))[-3000:]
        # The restarted task continued from the shared global step, not from 0.
        assert min(steps_after) > killed_at[victim], (victim, steps_after[:5], killed_at)
    restarted = _read(cluster.log_path(chief)).split("=== start chief-0")[-1]
    restored = re.findall(r"Restoring parameters from .*model\.ckpt-(\d+)", restarted)
    assert restored and int(restored[0]) >= killed_at[chief], restarted[-3000:]
