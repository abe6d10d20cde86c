"""What the session simulator's own click model scores on the sessions it wrote: session AUC and
NDCG@5 of its attraction a(j) (what a re-ranker can learn: it never sees the shown position),
of a(j) without the user's tier and gender fit, and of the click probability e(p) a(j) (with
the randomly drawn position the re-ranker cannot know).

    python bench/rerank_ceiling.py --synthetic_dir=SYN --impressions=IMP.tsv --sessions_dir=S \\
        [--split=eval] [--position_power=0.8]

SYN, IMP.tsv: `dpsr generate-synthetic` and `dpsr generate-sessions` outputs (its session ids
syn<k> name the k-th logged click, the item the query asked for); S: their `dpsr
prepare-sessions` output. Prints one JSON object.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        head = next(reader)
        return [dict(zip(head, r)) for r in reader]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic_dir", required=True)
    ap.add_argument("--impressions", required=True)
    ap.add_argument("--sessions_dir", required=True)
    ap.add_argument("--split", default="eval")
    ap.add_argument("--position_power", type=float, default=0.8)
    args = ap.parse_args()
    # pylint: disable=import-outside-toplevel
    from dpsr_tf.data import layout as layout_lib
    from dpsr_tf.demo import synthetic_sessions as sim
    from dpsr_tf.ranking import metrics
    from dpsr_tf.ranking import sessions as sessions_lib
    table = sessions_lib.load_sessions(args.sessions_dir, args.split)
    spec = layout_lib.load_layout_spec(sessions_lib.read_sessions_info(args.sessions_dir)
                                       ["layout_dir"])
    layout_ids = layout_lib.load_item_ids(spec)
    items = {r["item_id"]: r for r in _rows(os.path.join(args.synthetic_dir, "items.tsv"))}
    users = {r["user_id"]: r for r in _rows(os.path.join(args.synthetic_dir, "users.tsv"))}
    # The simulator's k-th session is its k-th logged click with a user (synthetic_sessions.py).
    clicks = [r for r in _rows(os.path.join(args.synthetic_dir, "interactions.tsv"))
              if r["label"] == "click" and r["user_id"]]
    scores = {"attraction": [], "attraction_without_user": [], "click_probability": []}
    for s in range(len(table)):
        logged = items[clicks[int(table.session_ids[s][len("syn"):])]["item_id"]]
        user = users.get(clicks[int(table.session_ids[s][len("syn"):])]["user_id"], {})
        want_tier = sim._TIER_OF_POWER.get(user.get("purchase_power", ""), "")  # pylint: disable=protected-access
        rows, _ = table.candidates(s)
        pos = table.positions[table.splits[s]:table.splits[s + 1]]
        for row, p in zip(rows, pos):
            item = items[layout_ids[row]]
            same = item["product_type"] == logged["product_type"]
            is_logged = item["item_id"] == logged["item_id"]
            a = sim.attraction(is_logged, same, item["price_tier"] == want_tier,
                               sim.gender_fits(item["gender"], user.get("gender", "")))
            scores["attraction"].append(a)
            scores["attraction_without_user"].append(sim.attraction(is_logged, same, False,
                                                                    False))
            scores["click_probability"].append(a / (1.0 + p) ** args.position_power)
    out = {"split": args.split, "sessions": len(table)}
    for name, x in scores.items():
        m = metrics.session_metrics(np.asarray(x), table.labels, table.splits)
        out[name] = {"session_auc": round(m["session_auc"], 4),
                     "ndcg@5": round(m["ndcg@5"], 4), "sessions_with_a_pair": m["sessions"]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
