"""The quick benchmark set: small runs of the maintained benchmarks, one table.

    make bench                                 # = python bench/quick.py
    python bench/quick.py [--only tokenizer,faiss] [--work_dir out/bench/quick]

Each job runs one script of bench/ at a small size, in its own process, one after another (a
few minutes on 2 cores). Every job's full output goes to <work_dir>/<job>.log; the figures it
tracks are collected into one Markdown table, followed by the exact command of each job, the
commit, the machine and its load average. These are smoke-sized runs: they show that every
path still works and roughly what it costs on this machine; the full-size figures and how they
were measured are in docs/benchmarks.md. Exit status 1 when a job failed (its row says so).
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def md_rows(text):
    """The cells of every Markdown table row in `text` (header and separator lines skipped)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def md_row(text, first):
    """The first Markdown row whose first cell starts with `first`."""
    return next(r for r in md_rows(text) if r[0].startswith(first))


def _last_json(text):
    return json.loads([l for l in text.splitlines() if l.startswith("[{")][-1])


# ------------------------------------------------------------------------------- the jobs
# name -> (script and arguments; {work} is the job's scratch folder, figures(output, work))

def _tokenizer(out, _):
    op = md_row(out, "dpsr Dpsr>Tokenize op")
    py = md_row(out, "dpsr pybind11")
    stock = md_row(out, "stock TF")
    return [("Dpsr>Tokenize op, texts/s (batch 1,024)", op[1]),
            ("pybind11 Tokenizer, texts/s", py[1]),
            ("op over stock TF string ops", stock[2])]


def _faiss(_, work):
    with open(os.path.join(work, "faiss.json"), encoding="utf-8") as f:
        r = json.load(f)
    b, s, o = r["builds"][0], r["search"][0], r["overhead"]
    return [(f"`{b['factory']}` build s / index MiB / peak RSS GiB",
             f"{b['build_seconds']:.1f} / {b['index_bytes'] / 2**20:.0f} / "
             f"{b['peak_rss'] / 2**30:.2f}"),
            (f"recall@1000 at nprobe {s['value']} (op = wheel)", f"{s['op_recall']:.3f}"),
            ("CPU ms per single query: op (tf.function) / wheel 1 thread",
             f"{s['op_cpu_ms']:.2f} / {s['wheel1_cpu_ms']:.2f}"),
            ("Session.run fixed cost, us (search of a 1-vector index / tf.identity)",
             f"{o['session_op']['median_ms'] * 1e3:.0f} / "
             f"{o['session_identity']['median_ms'] * 1e3:.0f}")]


def _lexical(out, _):
    ours, theirs = md_row(out, "dpsr core"), md_row(out, "bm25s")
    return [("dpsr core top 1,000: build s / p50 ms / p99 ms", f"{ours[1]} / {ours[2]} / {ours[3]}"),
            ("bm25s p50 / dpsr p50", f"{float(theirs[2]) / float(ours[2]):.1f}x")]


def _speller(out, _):
    rss = re.search(r"build ([\d.]+) s, RSS \+(\d+) MiB", out)
    op = md_row(out, "Dpsr>SpellCorrect")
    hostile = md_row(out, "hostile")
    return [("Dpsr>SpellCorrect, us per query (vs Dpsr>Tokenize)", f"{op[1]} ({op[3]})"),
            ("build s / RSS of a loaded vocabulary MiB", f"{rss.group(1)} / +{rss.group(2)}"),
            ("hostile query (100 made-up words), us", hostile[1])]


def _servable(out, _):
    r = _last_json(out)[0]
    s, h, b = r["servable"], r["hybrid"], r["bare"]
    return [(f"{r['heads']}-head servable, text in: p50 / p99 ms",
             f"{s['p50']:.2f} / {s['p99']:.2f}"),
            ("hybrid servable (+ BM25, fusion): p50 / p99 ms", f"{h['p50']:.2f} / {h['p99']:.2f}"),
            ("bare FAISS, both heads: p50 ms", f"{b['p50']:.2f}")]


def _serving(_, work):
    with open(os.path.join(work, "results.json"), encoding="utf-8") as f:
        r = json.load(f)
    rows = [("servable session.run CPU ms per query, batch 1 / 8",
             f"{r['servable_cost']['1']['cpu_ms_per_query']:.2f} / "
             f"{r['servable_cost']['8']['cpu_ms_per_query']:.2f}")]
    threads = r["servable_cost"].get("threads")
    if threads:
        rows.append((f"servable alone from {threads['threads']} threads: runs/s, cores",
                     f"{threads['runs_per_s']:.0f}, {threads['cores']:.2f}"))
    for run in r["runs"]:
        errors = sum(run["errors"].values())
        rows.append((f"{run['mode']} at {run['rate']:.0f} QPS: p50 / p99 ms, errors",
                     f"{run['p50_ms']:.1f} / {run['p99_ms']:.1f}, {errors}"))
    return rows


def _loop_cost(out, _):
    rows = []
    for name in ("trivial grpc.aio", "dpsr serve", "dpsr proxy"):
        r = md_row(out, name)
        rows.append((f"{name}: process / event-loop CPU ms per call", f"{r[3]} / {r[4]}"))
    return rows


JOBS = {
    "tokenizer": (["tokenizer_bench.py", "--repeats", "3"], _tokenizer),
    "faiss": (["faiss_bench.py", "--num_items", "100000", "--clusters", "100", "--noise", "0.5",
               "--indexes", "ivfsq8", "--nlist", "512", "--knob_values", "64",
               "--num_queries", "200", "--latency_queries", "200", "--skip_generic",
               "--work_dir", "{work}", "--json", "{work}/faiss.json"], _faiss),
    "lexical": (["lexical_bench.py", "--num_items", "100000", "--queries", "200"], _lexical),
    "speller": (["speller_bench.py", "--repeats", "2"], _speller),
    "servable": (["servable_bench.py", "--num_items", "100000", "--factory", "IVF512,SQ8",
                  "--heads", "2", "--queries", "100", "--train_steps", "20",
                  "--work_dir", "{work}"], _servable),
    "serving": (["serving_bench.py", "--num_items", "100000", "--factory", "IVF256,SQ8",
                 "--nprobe", "16", "--modes", "direct,proxy1", "--rates", "200",
                 "--duration", "5", "--warmup", "2", "--work_dir", "{work}"], _serving),
    "loop_cost": (["loop_cost_bench.py", "--calls", "1000", "--rounds", "1"], _loop_cost),
}


def _commit():
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no")
                   else "")


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated jobs of {', '.join(JOBS)}")
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "out", "bench", "quick"))
    parser.add_argument("--timeout", type=float, default=900, help="seconds per job")
    args = parser.parse_args()
    args.work_dir = os.path.abspath(args.work_dir)
    names = [n for n in args.only.split(",") if n] or list(JOBS)
    unknown = set(names) - set(JOBS)
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}; jobs: {', '.join(JOBS)}")

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    load_before = os.getloadavg()
    started = time.time()
    table, commands, failed = [], [], []
    for name in names:
        script, figures = JOBS[name]
        work = os.path.join(args.work_dir, name)
        os.makedirs(work, exist_ok=True)
        if not os.path.relpath(work, ROOT).startswith(".."):
            work = os.path.relpath(work, ROOT)   # shorter commands; the jobs run in ROOT
        argv = [a.replace("{work}", work) for a in script]
        commands.append(f"{name}: python bench/{' '.join(argv)}")
        print(f"[{time.strftime('%H:%M:%S')}] {name}: python bench/{' '.join(argv)}",
              file=sys.stderr, flush=True)
        start = time.time()
        log = os.path.join(args.work_dir, f"{name}.log")
        try:
            proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", argv[0]), *argv[1:]],
                                  cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=args.timeout)
            output, status = proc.stdout + "\n" + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
                else (e.stdout or "")
            status = f"timed out after {args.timeout:.0f} s"
        with open(log, "w", encoding="utf-8") as f:
            f.write(output)
        seconds = time.time() - start
        try:
            if status != 0:
                raise RuntimeError(f"exit status {status}")
            rows = figures(output, os.path.join(ROOT, work))
        except Exception as e:  # pylint: disable=broad-except
            rows = [("FAILED", f"{type(e).__name__}: {e} (log: {os.path.relpath(log, ROOT)})")]
            failed.append(name)
        for i, (what, value) in enumerate(rows):
            table.append((name if i == 0 else "", what, value,
                          f"{seconds:.0f}" if i == 0 else ""))

    print(f"\n## Quick benchmark set, {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| job | figure | value | job wall s |")
    print("|---|---|---:|---:|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    print(f"\ncommit {_commit()}; {platform.node()}, {os.cpu_count()} cores ({_cpu_model()}); "
          f"load average {load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
          f"{time.time() - started:.0f} s in all; logs in {os.path.relpath(args.work_dir, ROOT)}/")
    print("\n" + "\n".join(commands))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
