"""Wall time and peak memory of `dpsr prepare` in one process and on Beam's DirectRunner.

  PYTHONPATH=. nice python bench/beam_prepare_bench.py --interactions=1000000 --workers=2 \
      [--shards=8] [--work_dir=/tmp/beam_prepare_bench] [--skip_single] [--skip_beam]
      [--beam_flag=--beam_partition_mb=16 ...] [--keep]

Generates a synthetic catalog (interactions / 10 items, interactions / 20 users, seed 0), cuts
the interactions file into --shards files with the header (so Beam reads them in parallel; the
single process reads the same glob), then runs each prepare as a `dpsr prepare` subprocess and
samples the resident memory of its whole process tree every 0.2 s: the peak of the launcher
process and of each other process (DirectRunner multi_processing workers), and the peak of the
tree's sum. Prints one markdown row per run and checks the two layouts have the same counts.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _generate(work: str, n: int, shards: int) -> dict:
    from dpsr_tf.demo import synthetic_catalog as synthetic  # pylint: disable=import-outside-toplevel
    cat_dir = os.path.join(work, f"catalog-{n}")
    done = os.path.join(cat_dir, "shards.done")
    if not os.path.exists(done):
        shutil.rmtree(cat_dir, ignore_errors=True)
        cfg = synthetic.SyntheticConfig(num_items=max(100, n // 10), num_users=max(20, n // 20),
                                        num_interactions=n, seed=0,
                                        write_interaction_truth=False)
        t = time.monotonic()
        cat = synthetic.generate(cfg, cat_dir, log=lambda *_: None)
        print(f"generated {n:,} interactions in {time.monotonic() - t:.0f} s", flush=True)
        with open(cat.interactions_path, encoding="utf-8") as f:
            header = f.readline()
            outs = [open(os.path.join(cat_dir, f"inter-{s:05d}.tsv"), "w", encoding="utf-8")
                    for s in range(shards)]
            for s in outs:
                s.write(header)
            for i, line in enumerate(f):          # round robin: shards of equal size
                outs[i % shards].write(line)
            for s in outs:
                s.close()
        os.remove(cat.interactions_path)
        open(done, "w").close()
    return {"items": os.path.join(cat_dir, "items.tsv"),
            "users": os.path.join(cat_dir, "users.tsv"),
            "interactions": os.path.join(cat_dir, "inter-*.tsv")}


def _run(args, env) -> dict:
    """Runs a command; samples the RSS of its process tree. Returns wall and peaks (bytes)."""
    start = time.monotonic()
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    peaks, tree_peak = {}, 0
    while proc.poll() is None:
        total = 0
        try:
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                rss = p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            total += rss
            peaks[p.pid] = max(peaks.get(p.pid, 0), rss)
        tree_peak = max(tree_peak, total)
        time.sleep(0.2)
    out = proc.stdout.read()
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{args[4:6]} failed:\n{out[-3000:]}")
    launcher = peaks.pop(proc.pid, 0)
    others = sorted(peaks.values(), reverse=True)
    return {"wall_s": wall, "launcher": launcher, "others": others, "tree": tree_peak,
            "log": out}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--interactions", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--work_dir", default="/tmp/beam_prepare_bench")
    ap.add_argument("--skip_single", action="store_true")
    ap.add_argument("--skip_beam", action="store_true")
    ap.add_argument("--beam_flag", action="append", default=[],
                    help="extra `dpsr prepare` flag of the Beam run, e.g. --beam_partition_mb=16")
    ap.add_argument("--keep", action="store_true", help="keep the two layouts")
    a = ap.parse_args()
    os.makedirs(a.work_dir, exist_ok=True)
    files = _generate(a.work_dir, a.interactions, a.shards)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    base = [sys.executable, "-m", "dpsr_tf.cli", "prepare", f"--items={files['items']}",
            f"--users={files['users']}", f"--interactions={files['interactions']}"]
    runs = []
    if not a.skip_single:
        runs.append(("in process", base + [f"--output={a.work_dir}/single"]))
    if not a.skip_beam:
        runs.append((f"DirectRunner, {a.workers} workers (multi_processing)",
                     base + [f"--output={a.work_dir}/beam", "--runner=DirectRunner",
                             f"--beam_option=--direct_num_workers={a.workers}",
                             "--beam_option=--direct_running_mode=multi_processing"]
                     + a.beam_flag))
    for d in ("single", "beam"):
        shutil.rmtree(os.path.join(a.work_dir, d), ignore_errors=True)
    mib = 1 << 20
    print("| run | interactions | wall | launcher peak RSS | worker peak RSS (each) | "
          "tree peak RSS | load average (start / end) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, cmd in runs:
        load = os.getloadavg()[0]
        r = _run(cmd, env)
        for line in r["log"].splitlines():
            if line.startswith("beam: "):
                print("   ", line, flush=True)
        workers = ", ".join(f"{w / mib:,.0f}" for w in r["others"][:a.workers + 2]) or "-"
        print(f"| {name} | {a.interactions:,} | {r['wall_s']:.0f} s | "
              f"{r['launcher'] / mib:,.0f} MiB | {workers} MiB | {r['tree'] / mib:,.0f} MiB | "
              f"{load:.1f} / {os.getloadavg()[0]:.1f} |", flush=True)
    if not a.skip_single and not a.skip_beam:
        from dpsr_tf.data.layout import LAYOUT_JSON  # pylint: disable=import-outside-toplevel
        counts = []
        for d in ("single", "beam"):
            with open(os.path.join(a.work_dir, d, LAYOUT_JSON), encoding="utf-8") as f:
                counts.append(json.load(f)["counts"])
        print("same counts and report:", counts[0] == counts[1])
    if not a.keep:
        for d in ("single", "beam"):
            shutil.rmtree(os.path.join(a.work_dir, d), ignore_errors=True)


if __name__ == "__main__":
    main()
