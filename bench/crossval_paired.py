"""Paired comparison of systems across `dpsr crossval` runs over the same folds: e.g. the
fine-tuned encoder's served hybrid (one run) against the default towers' (another run), pooled
over every fold's held-out requests.

    PYTHONPATH=. python bench/crossval_paired.py --run ft=/tmp/ft_cv --run default=/tmp/def_cv \
        [--run student=/tmp/stu_cv] --baseline default:hybrid \
        [--systems hybrid,dpsr_served,zero_shot,zero_shot_hybrid] [--metrics recall@100,ndcg@10]

Runs pair only when each fold's held-out requests are the same: the runs must use the same
prepare flags (the fold's layout's eval records are compared byte for byte). A system is read
from fold_F/hybrid.json (hybrid) or fold_F/metrics.json (the others), request by request.
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dpsr_tf.evaluation import paired as paired_lib  # noqa: E402


def _eval_records_digest(fold_dir: str) -> str:
    digest = hashlib.sha1()
    records = os.path.join(fold_dir, "layout", "interactions")
    for name in sorted(os.listdir(records)):
        if name.startswith("eval"):
            with open(os.path.join(records, name), "rb") as f:
                digest.update(name.encode() + f.read())
    return digest.hexdigest()


def _per_request(fold_dir: str, system: str):
    """{metric: [n]} of `system` on the fold's held-out requests, or None when not recorded."""
    name = "hybrid.json" if system == "hybrid" else "metrics.json"
    with open(os.path.join(fold_dir, name), encoding="utf-8") as f:
        values = json.load(f).get("per_query", {}).get(system)
    return {m: np.asarray(v, np.float64) for m, v in values.items()} if values else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="LABEL=crossval output")
    parser.add_argument("--systems", default="hybrid,dpsr_served,zero_shot,zero_shot_hybrid")
    parser.add_argument("--baseline", required=True, help="LABEL:system")
    parser.add_argument("--metrics", default="recall@100,ndcg@10")
    parser.add_argument("--samples", type=int, default=10000)
    args = parser.parse_args()
    runs = dict(r.split("=", 1) for r in args.run)
    folds = sorted(int(d.split("_")[1]) for d in os.listdir(next(iter(runs.values())))
                   if d.startswith("fold_"))
    pooled = {}
    for fold in folds:
        digests = {label: _eval_records_digest(os.path.join(out, f"fold_{fold}"))
                   for label, out in runs.items()}
        if len(set(digests.values())) != 1:
            raise SystemExit(f"fold {fold}: the runs hold out different requests ({digests}); "
                             f"run them with the same prepare flags")
        for label, out in runs.items():
            for system in args.systems.split(","):
                values = _per_request(os.path.join(out, f"fold_{fold}"), system)
                if values is None:
                    continue
                key = f"{label}:{system}"
                for metric, v in values.items():
                    pooled.setdefault(key, {}).setdefault(metric, []).append(v)
    per_system = {k: {m: np.concatenate(v) for m, v in ms.items()}
                  for k, ms in pooled.items() if len(next(iter(ms.values()))) == len(folds)}
    if args.baseline not in per_system:
        raise SystemExit(f"--baseline {args.baseline}: not among {sorted(per_system)}")
    for metric in args.metrics.split(","):
        base = per_system[args.baseline][metric]
        print(f"{metric}: {args.baseline} {base.mean():.4f} over {len(base)} requests")
        for key in sorted(per_system):
            if key == args.baseline or metric not in per_system[key]:
                continue
            r = paired_lib.paired_test(per_system[key][metric], base, metric, key,
                                       args.baseline, num_samples=args.samples)
            print(f"  {key:28s} {r.mean_a:.4f}  diff {r.diff:+.4f} [{r.ci_low:+.4f}, "
                  f"{r.ci_high:+.4f}] p={r.p_value:.4g}")


if __name__ == "__main__":
    main()
