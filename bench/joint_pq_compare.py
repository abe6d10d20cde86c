"""Served quality of a jointly trained IVF-PQ index against a separately built one.

For each (model directory, index directory) pair given as --run NAME:MODEL_DIR:INDEX_DIR, ranks
the layout's eval split exactly (brute force over the model's item embeddings) and through the
index as the servable does, at the --nprobe given (the same for every index), and prints one
markdown row per pair: recall@100, recall@1000, precision@100 exact and served, the overlap of
the served top 100 with the exact top 100, and the index's factory and size
(dpsr_tf/evaluation/index_compare.py).

    python bench/joint_pq_compare.py --nprobe 16 \\
        --run joint:/tmp/r16/hd_joint:/tmp/r16/hd_joint_index \\
        --run separate:/tmp/r16/hd_ft:/tmp/r16/hd_ft_ivfpq --output /tmp/r16/hd_compare.json
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True,
                        help="NAME:MODEL_DIR:INDEX_DIR (repeat)")
    parser.add_argument("--nprobe", type=int, default=None,
                        help="IVF lists probed by every index (default: each index's own)")
    parser.add_argument("--layout_dir", default=None)
    parser.add_argument("--output", default=None, help="write every metric as JSON here")
    args = parser.parse_args()
    from dpsr_tf.evaluation import index_compare  # pylint: disable=import-outside-toplevel
    # pylint: disable-next=import-outside-toplevel
    from dpsr_tf.model.progress import quiet_tf_logging
    quiet_tf_logging()
    results = {}
    for spec in args.run:
        try:
            name, model_dir, index_dir = spec.split(":")
        except ValueError:
            parser.error(f"--run {spec!r}: expected NAME:MODEL_DIR:INDEX_DIR")
        _log(f"{name}: {model_dir} through {index_dir}")
        out = index_compare.compare_indexes(model_dir, [index_dir], args.layout_dir, args.nprobe,
                                            log=_log)
        results[name] = {"model_dir": model_dir, "index_dir": index_dir, "exact": out["exact"],
                         "served": out[index_dir]}
    print("| run | index | nprobe | exact R@100 | served R@100 | exact R@1000 | served R@1000 "
          "| exact P@100 | served P@100 | overlap@100 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        e, s = r["exact"], r["served"]
        print(f"| {name} | {s['factory']} | {s['nprobe']} | {e['recall@100']:.4f} | "
              f"{s['recall@100']:.4f} | {e.get('recall@1000', float('nan')):.4f} | "
              f"{s.get('recall@1000', float('nan')):.4f} | {e['precision@100']:.4f} | "
              f"{s['precision@100']:.4f} | {s['overlap@100']:.4f} |")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
