"""dpsr launch-local: a real multi-process parameter-server cluster on loopback.

`dpsr launch-local --workers=N --ps=P [--evaluator] --layout_dir=L --model_dir=M [train flags]`
starts 1 chief + N workers + P parameter servers (+ 1 evaluator), each a `dpsr train` process
with its own TF_CONFIG on free localhost ports, logs to <model_dir>/launch/<task>.log, waits for
the chief and workers to finish, then stops the parameter servers. It is the reference for a
multi-host run: the TF_CONFIG each task got is in <model_dir>/launch/tf_config.json.
"""
import os
import sys

from absl import flags, logging

from dpsr_tf.cli import training_flags
from dpsr_tf.training import launcher

_WORKERS = flags.DEFINE_integer("workers", 1, "Workers besides the chief.")
_PS = flags.DEFINE_integer("ps", 1, "Parameter servers.")
_EVALUATOR = flags.DEFINE_bool("evaluator", True, "Also start an evaluator task.")
_TIMEOUT = flags.DEFINE_float("timeout_secs", 0, "Stop the cluster after this long (0 = never).")


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"dpsr launch-local: unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    try:
        train_config = training_flags.train_config_from_flags()
        training_flags.model_config_from_flags()
    except ValueError as e:
        raise SystemExit(f"dpsr launch-local: {e}") from None
    launch_dir = os.path.join(train_config.model_dir, "launch")
    os.makedirs(launch_dir, exist_ok=True)
    flagfile = os.path.join(launch_dir, "train.flags")
    with open(flagfile, "w", encoding="utf-8") as f:
        f.write(training_flags.serialize())
    command = [sys.executable, "-m", "dpsr_tf.cli", "train", f"--flagfile={flagfile}"]
    try:
        cluster = launcher.LocalCluster(command, num_workers=_WORKERS.value, num_ps=_PS.value,
                                        evaluator=_EVALUATOR.value, log_dir=launch_dir)
    except ValueError as e:
        raise SystemExit(f"dpsr launch-local: {e}") from None
    with cluster:
        cluster.start()
        logging.info("cluster %s; logs in %s", cluster.cluster, launch_dir)
        codes = cluster.wait(timeout=_TIMEOUT.value or None)
    failed = {task: code for task, code in codes.items()
              if code != 0 and not task.startswith("ps-")}  # ps never exit: stopped by us
    for task, code in sorted(codes.items()):
        logging.info("%s exited with %s", task, code)
    if failed:
        raise SystemExit(f"dpsr launch-local: tasks failed: {failed}; see {launch_dir}/*.log")
