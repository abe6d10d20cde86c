"""Dense feedback over shards: the whole catalog's first hits (the proxy's two rounds) against
each shard's own (one round), on a model's eval split.

    PYTHONPATH=. python bench/sharded_feedback_quality.py --model_dir=M --index_dir=I \
        [--settings=10:0.25] [--nospelling] [--samples=1000]

I is a sharded `dpsr index` build (--num_shards >= 2). Per request of the layout's eval split
(queries as the speller corrects them unless --nospelling), the served dense top 1,000:
  none    no feedback;
  global  each head moved toward the unit mean of the request's first hits over every shard
          (what a sharded feedback servable answers through `dpsr proxy`, and what `dpsr export`
          and `dpsr evaluate` score; docs/export.md "Dense feedback over shards");
  local   each shard moves the heads toward its own first hits and searches itself, and the
          shards' lists are merged (what one round to S on every shard would answer).
Prints Recall@100 / Recall@1000 / nDCG@10 of each and the paired differences
(evaluation/paired.py: bootstrap 95% interval over requests, sign-flip p, wins / losses / ties).
"""
import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dpsr_tf.evaluation import evaluate as evaluate_lib  # noqa: E402
from dpsr_tf.evaluation import hybrid as hybrid_lib  # noqa: E402
from dpsr_tf.evaluation import metrics as metrics_lib  # noqa: E402
from dpsr_tf.evaluation import paired  # noqa: E402
from dpsr_tf.evaluation import served as served_lib  # noqa: E402
from dpsr_tf.evaluation.spelled_layout import layout_of, spelled_layout  # noqa: E402
from dpsr_tf.search import dense_feedback  # noqa: E402
from dpsr_tf.search.dense_feedback import FeedbackConfig  # noqa: E402

REPORTED = ("recall@100", "recall@1000", "ndcg@10")


def local_lists(index, heads, item_emb, k, feedback):
    """[Q, k] (scores, rows): each shard searched with the heads moved toward its own first
    hits, the shards' lists merged as the proxy merges them."""
    scores, rows = [], []
    for s in range(len(index.indexes)):
        shard = dataclasses.replace(index, indexes=[index.indexes[s]], rows=[index.rows[s]])
        _, first = served_lib.search_served(shard, heads, feedback.items)
        moved = dense_feedback.moved_heads_np(heads, first, item_emb, feedback)
        sc, rw = served_lib.search_served(shard, moved, k)
        scores.append(sc)
        rows.append(rw)
    return served_lib.merge_shards_np(scores, rows, k)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--index_dir", required=True, help="a sharded index build")
    parser.add_argument("--settings", default=f"{dense_feedback.DEFAULT.items}:"
                        f"{dense_feedback.DEFAULT.weight:g}", help="feedback items:weight")
    parser.add_argument("--spelling", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap resamples")
    args = parser.parse_args()
    items, weight = args.settings.split(":")
    feedback = FeedbackConfig(int(items), float(weight))
    cfg = evaluate_lib.EvalConfig(split="eval", num_random=0)
    layout = layout_of(args.model_dir, None)
    with spelled_layout(layout, args.index_dir if args.spelling else None,
                        log=lambda _: None) as view:
        run = hybrid_lib.open_hybrid(args.model_dir, args.index_dir, view or layout, cfg,
                                     log=lambda _: None)
    shards = len(run.index.indexes)
    if shards < 2:
        raise SystemExit(f"{args.index_dir} has one shard: global and local are the same")
    lists = {"none": run.dense_rows,
             "global": run.dense_lists(feedback)[1],
             "local": local_lists(run.index, run.scorer.request_emb, run.scorer.item_emb, run.k,
                                  feedback)[1]}
    splits, rows, gains = run.relevant
    got = {name: metrics_lib.per_request_metrics(r, splits, rows, gains, recall_ks=(100, 1000))
           for name, r in lists.items()}
    print(f"{args.model_dir}, {args.index_dir} ({shards} shards), {feedback.describe()}, "
          f"{len(splits) - 1} requests, spelling {'on' if view is not None else 'off'}")
    for name, m in got.items():
        print(f"  {name:7s} " + " ".join(f"{k} {m[k].mean():.4f}" for k in REPORTED))
    for a, b in (("global", "none"), ("local", "none"), ("global", "local")):
        for k in REPORTED:
            print("  " + paired.paired_test(got[a][k], got[b][k], k, a, b,
                                            num_samples=args.samples).line())


if __name__ == "__main__":
    main()
