"""Retrieval-quality sweep: train and evaluate one model per setting on a layout, one table.

Every run is `dpsr train` then `dpsr evaluate` as separate processes, exactly as a user would run
them, so the table's numbers are reproducible with the printed commands. Results go to
<work_dir>/<run>/metrics.json and, as a Markdown table, to <work_dir>/sweep.md (appended as runs
finish, so a long sweep can be read while it runs; finished runs are skipped on a rerun).

  python bench/quality_sweep.py --layout_dir=/tmp/hd_layout --work_dir=/tmp/sweep \
      --steps=20000 --run="shared:--text_encoder=shared" --run="paper:--text_encoder=separate \
      --loss=hinge --pseudo_query_ratio=0"

Each --run is NAME:FLAGS (dpsr train flags, space-separated). --bm25 adds a BM25 row.
"""
import json
import os
import shlex
import subprocess
import sys
import time

from absl import app, flags

_LAYOUT = flags.DEFINE_string("layout_dir", None, "Layout to train and evaluate on.")
_WORK = flags.DEFINE_string("work_dir", None, "Where models, metrics and sweep.md go.")
_STEPS = flags.DEFINE_integer("steps", 20000, "Training steps of every run.")
_RUNS = flags.DEFINE_multi_string("run", [], "NAME:dpsr train flags (space-separated).")
_BM25 = flags.DEFINE_bool("bm25", False, "Also evaluate BM25 on the layout.")
_SERVED = flags.DEFINE_string("served_factory", None,
                              "Also index each model with this FAISS factory string and report "
                              "the served ranking (dpsr evaluate --served).")
flags.mark_flags_as_required(["layout_dir", "work_dir"])

METRICS = ("recall@10", "recall@100", "recall@1000", "ndcg@10", "mrr@10", "auc")


def _dpsr(*args) -> list:
    return [sys.executable, "-m", "dpsr_tf.cli", *args]


def _run(cmd, log_path):
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)


def _row(name, metrics, seconds, command):
    cells = [f"{metrics.get(m, float('nan')):.4f}" for m in METRICS]
    served = metrics.get("served_recall@100")
    extra = f" | {served:.4f}" if served is not None else " | -"
    return f"| {name} | {seconds:.0f} | " + " | ".join(cells) + extra + f" | `{command}` |"


def _sweep_one(name: str, train_flags: str) -> None:
    out = os.path.join(_WORK.value, name)
    metrics_path = os.path.join(out, "metrics.json")
    if os.path.exists(metrics_path):
        print(f"{name}: done before ({metrics_path})")
        return
    model_dir = os.path.join(out, "model")
    os.makedirs(out, exist_ok=True)
    train = _dpsr("train", f"--layout_dir={_LAYOUT.value}", f"--model_dir={model_dir}",
                  f"--train_steps={_STEPS.value}", f"--save_checkpoints_steps={_STEPS.value}",
                  "--eval_steps=1", "--throttle_secs=1000000", "--log_step_count_steps=5000",
                  *shlex.split(train_flags))
    start = time.monotonic()
    print(f"{name}: training ({' '.join(train[3:])})", flush=True)
    _run(train, os.path.join(out, "train.log"))
    seconds = time.monotonic() - start
    evaluate = _dpsr("evaluate", f"--model_dir={model_dir}", "--num_random=0",
                     f"--output={os.path.join(out, 'eval.json')}")
    if _SERVED.value:
        index_dir = os.path.join(out, "index")
        _run(_dpsr("index", f"--model_dir={model_dir}", f"--output_dir={index_dir}",
                   f"--index_factory={_SERVED.value}"), os.path.join(out, "index.log"))
        evaluate += ["--served", f"--index_dir={index_dir}"]
    _run(evaluate, os.path.join(out, "eval.log"))
    with open(os.path.join(out, "eval.json"), encoding="utf-8") as f:
        metrics = json.load(f)["dpsr"]
    metrics["train_seconds"] = seconds
    metrics["train_flags"] = train_flags
    with open(metrics_path, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    _append(_row(name, metrics, seconds, "dpsr train " + train_flags))
    print(f"{name}: " + " ".join(f"{m}={metrics.get(m, float('nan')):.4f}" for m in METRICS),
          flush=True)


def _append(line: str) -> None:
    path = os.path.join(_WORK.value, "sweep.md")
    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"layout: {_LAYOUT.value}; {_STEPS.value} steps per run\n\n"
                    "| run | train s | " + " | ".join(METRICS) + " | served R@100 | flags |\n"
                    "|---|---:|" + "---:|" * (len(METRICS) + 1) + "---|\n")
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def main(argv):
    del argv
    os.makedirs(_WORK.value, exist_ok=True)
    runs = []
    for spec in _RUNS.value:
        name, sep, train_flags = spec.partition(":")
        if not sep or not name or "/" in name:
            raise app.UsageError(f"--run={spec!r}: use NAME:FLAGS, e.g. "
                                 f"'shared:--text_encoder=shared'")
        runs.append((name, train_flags))
    if _BM25.value and not os.path.exists(os.path.join(_WORK.value, "bm25.json")):
        _run(_dpsr("evaluate", "--bm25", f"--layout_dir={_LAYOUT.value}", "--num_random=0",
                   f"--output={os.path.join(_WORK.value, 'bm25.json')}"),
             os.path.join(_WORK.value, "bm25.log"))
        with open(os.path.join(_WORK.value, "bm25.json"), encoding="utf-8") as f:
            _append(_row("BM25 (bm25s)", json.load(f)["bm25"], 0, "dpsr evaluate --bm25"))
    for name, train_flags in runs:
        _sweep_one(name, train_flags)


if __name__ == "__main__":
    app.run(main)
