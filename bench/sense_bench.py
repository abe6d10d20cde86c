"""Sense benchmark: do the query heads split the senses of the synthetic catalog's polysemous
queries ("apple", "mouse", ...)? One table row per model (and per head quota), paired tests of
the overall metrics against the first model.

  python bench/sense_bench.py --catalog_dir=C --layout_dir=L \
      --model=one_head:/tmp/m1 --model=two_heads:/tmp/m2 [--head_min_share=0.5] [--json=F]

Rows: the sense metrics of dpsr_tf/evaluation/senses.py at K = 10 and 100 on the served
ranking (each head's exact top K, merged by best score; with --head_min_share also the per-head
quota merge), then the split's Recall@10/100 and nDCG@10 of every eval request ranked as served
(max over heads), and the paired test (dpsr_tf/evaluation/paired.py) of each model against the
first (covered@100 per query too). By default only the polysemous queries of the eval split,
which no model trained on. Personalized models embed the polysemous queries without a user (an anonymous request)
and, with --users=N, also once per user for the first N users. On a real catalog without a
ground truth (Home Depot), --multi_type takes as "polysemous" the eval queries whose relevant
items fall in two or more product types read off the titles (senses.title_type), one sense per
type:

  python bench/sense_bench.py --multi_type --layout_dir=HD --model=one_head:M1 --model=two:M2

--pool=F1,F2,... (no model) reads the --json files of several seeds and prints, per row name and
for the unseen and the seen queries apart, the sense metrics over all of them and the paired
test of covered@10 / covered@100 against the first row over queries x seeds:

  python bench/sense_bench.py --layout_dir=L --pool=s0.json,s1.json,s2.json
"""
import json
import sys

import numpy as np
from absl import app, flags

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.demo import synthetic_truth
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.evaluation import metrics as metrics_lib
from dpsr_tf.evaluation import paired, senses
from dpsr_tf.model.embedder import CheckpointEmbedder
from dpsr_tf.model.model_dir import load_model_config
from dpsr_tf.search import head_merge

_CATALOG = flags.DEFINE_string("catalog_dir", None, "The synthetic catalog (ground truth).")
_LAYOUT = flags.DEFINE_string("layout_dir", None, "The layout prepared from it.")
_MODELS = flags.DEFINE_multi_string("model", [], "NAME:MODEL_DIR, the first is the baseline.")
_SHARES = flags.DEFINE_multi_float("head_min_share", [],
                                   "Also score the per-head quota merge with this share.")
_KS = flags.DEFINE_list("ks", ["10", "100"], "Cut-offs.")
_JSON = flags.DEFINE_string("json", None, "Write every row (and per-query detail) here.")
_QUERIES = flags.DEFINE_enum("queries", "unseen", ["unseen", "seen", "all"],
                             "Which polysemous queries: those of the eval split (never trained "
                             "on; generate with --polysemous_brands to have many), the others, "
                             "or all.")
_USERS = flags.DEFINE_integer("users", 0, "Personalized models: also embed every polysemous "
                              "query for each of the first N users (a row over all pairs).")
_MULTI_TYPE = flags.DEFINE_bool(
    "multi_type", False, "Real-data analogue without a ground truth (no --catalog_dir): the "
    "eval queries whose relevant items fall in 2+ product types read off the titles "
    "(senses.title_type), one sense per type.")
_POOL = flags.DEFINE_list("pool", [], "Pool these --json outputs (one per seed) instead of "
                          "scoring models.")
flags.mark_flags_as_required(["layout_dir"])

OVERALL = ("recall@10", "recall@100", "ndcg@10")


def _query_rows(spec, texts):
    index = {t: i for i, t in enumerate(layout_lib.load_queries(spec))}
    missing = [t for t in texts if t not in index]
    if missing:
        raise ValueError(f"{spec.layout_dir}: polysemous queries {missing} are not in the "
                         "layout's query table")
    return np.array([index[t] for t in texts], np.int64)


def _multi_type_queries(spec, eval_set):
    titles = layout_lib.read_lines(spec.path(layout_lib.ITEM_TITLES))
    return senses.multi_type_queries(eval_set.queries, eval_set.relevant_splits,
                                     eval_set.relevant_rows,
                                     [senses.title_type(t) for t in titles])


def _quota_metrics(scorer, eval_set, share):
    """Recall@10 and nDCG@10 of the quota merge asked for k = 10, Recall@100 of k = 100."""
    out = {metrics_lib.PER_REQUEST: {}}
    for k, names in ((10, ("recall@10", "ndcg@10")), (100, ("recall@100",))):
        scores, lists = senses.head_lists(scorer.request_emb, scorer.item_emb, k)
        retrieved = head_merge.merge_heads_quota_np(scores, lists, k, share)[1]
        got = metrics_lib.retrieval_metrics(
            retrieved, eval_set.relevant_splits, eval_set.relevant_rows,
            eval_set.relevant_gains, recall_ks=(k,), with_per_request=True)
        for name in names:
            out[name] = got[name]
            out[metrics_lib.PER_REQUEST][name] = got[metrics_lib.PER_REQUEST][name]
    return out


def _one_model(name, model_dir, spec, eval_set, queries, ks):
    model_config, _ = load_model_config(model_dir)
    with CheckpointEmbedder(model_dir, None, model_config, spec) as embedder:
        scorer = evaluate_lib.EmbeddingScorer(embedder, spec, eval_set)
        rows = _query_rows(spec, [q.text for q in queries])
        tok, spl, users, hist = evaluate_lib.request_inputs(
            spec, rows, np.full(len(rows), -1, np.int64), np.zeros(len(rows), np.int64))
        heads = embedder.embed_queries(tok, spl, users, hist, query_rows=rows)
        user_heads = None
        if _USERS.value and model_config.personalization != "none":
            n = min(_USERS.value, spec.num_users)
            pair_rows = np.tile(rows, n)
            tok, spl, users, hist = evaluate_lib.request_inputs(
                spec, pair_rows, np.repeat(np.arange(n, dtype=np.int64), len(rows)),
                np.zeros(len(pair_rows), np.int64))
            user_heads = embedder.embed_queries(tok, spl, users, hist, query_rows=pair_rows)
    scorer.beta = 0.0   # served: each head searched, merged by best score
    retrieved = metrics_lib.retrieve(scorer.score_requests, len(eval_set), 100, 256)
    overall = metrics_lib.retrieval_metrics(
        retrieved, eval_set.relevant_splits, eval_set.relevant_rows, eval_set.relevant_gains,
        recall_ks=(10, 100), with_per_request=True)
    out = []
    for share in [None] + list(_SHARES.value):
        if share is not None and model_config.num_heads == 1:
            continue
        if share is not None:   # every eval request through the quota merge of k = 10, 100
            overall = _quota_metrics(scorer, eval_set, share)
        detail = senses.evaluate_senses(queries, heads, scorer.item_emb, ks, quota=share)
        label = name if share is None else f"{name}, quota {share:g}"
        covered = {f"covered@{d.k}": [] for d in detail}
        for d in detail:
            covered[f"covered@{d.k}"].append(float(d.covered))
        out.append({"name": label, "heads": model_config.num_heads, "covered": covered,
                    "senses": senses.summarize(detail),
                    "overall": {m: float(overall[m]) for m in OVERALL},
                    "per_request": overall[metrics_lib.PER_REQUEST],
                    "detail": [dict(q=d.text, k=d.k, recall=d.recall, covered=d.covered,
                                    purity=d.head_purity, sense=d.head_sense) for d in detail]})
    if user_heads is not None:
        pairs = list(queries) * (len(user_heads) // len(queries))
        detail = senses.evaluate_senses(pairs, user_heads, scorer.item_emb, ks)
        out.append({"name": f"{name}, {len(pairs) // len(queries)} users", "heads":
                    model_config.num_heads, "senses": senses.summarize(detail),
                    "overall": out[0]["overall"], "per_request": None, "covered": None,
                    "detail": []})
    return out


def _pool(paths, eval_queries):
    runs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            runs.append([r for r in json.load(f) if r["detail"]])
    names = [r["name"] for r in runs[0]]
    held_out = set(eval_queries)
    for group in ("unseen", "seen"):
        keep = (lambda t: t in held_out) if group == "unseen" else (lambda t: t not in held_out)
        pooled = {n: [senses.QuerySenses(d["q"], d["k"], tuple(d["recall"]), d["covered"],
                                         tuple(d["purity"]), tuple(d["sense"]))
                      for run in runs for r in run if r["name"] == n for d in r["detail"]
                      if keep(d["q"])] for n in names}
        if not pooled[names[0]]:
            continue
        print(f"\n{group} queries, {len(runs)} runs pooled")
        print("| row | covered@10 | covered@100 | purity@10 | distinct@10 | R@100 | nDCG@10 "
              "| covered@10 vs first | covered@100 vs first |")
        print("|---" * 9 + "|")
        for n in names:
            summary = senses.summarize(pooled[n])
            tests = []
            for k in (10, 100):
                got = [float(d.covered) for d in pooled[n] if d.k == k]
                base = [float(d.covered) for d in pooled[names[0]] if d.k == k]
                r = paired.paired_test(got, base, f"covered@{k}")
                tests.append(f"{r.diff:+.3f} (p {r.p_value:.3f})")
            overall = {m: np.mean([r["overall"][m] for run in runs for r in run
                                   if r["name"] == n]) for m in ("recall@100", "ndcg@10")}
            print(f"| {n} | {summary['covered@10']:.3f} | {summary['covered@100']:.3f} | "
                  f"{summary['purity@10']:.3f} | {summary['distinct_head_senses@10']:.2f} | "
                  f"{overall['recall@100']:.4f} | {overall['ndcg@10']:.4f} | "
                  + " | ".join(tests) + " |")


def main(argv):
    del argv
    spec = layout_lib.load_layout_spec(_LAYOUT.value)
    if _POOL.value:
        eval_set, _ = evaluate_lib.load_split(spec, evaluate_lib.EvalConfig(
            recall_ks=(10, 100), num_random=0, per_request=True))
        _pool(_POOL.value, eval_set.queries)
        return 0
    ks = tuple(int(k) for k in _KS.value)
    eval_set, _ = evaluate_lib.load_split(spec, evaluate_lib.EvalConfig(
        recall_ks=(10, 100), num_random=0, per_request=True))
    if _MULTI_TYPE.value:
        queries = _multi_type_queries(spec, eval_set)   # eval queries: all unseen
        unseen, seen = queries, []
    else:
        if not _CATALOG.value:
            raise app.UsageError("--catalog_dir is required (or --multi_type)")
        polysemy = synthetic_truth.load_ground_truth(_CATALOG.value)["polysemy"]
        queries = senses.load_polysemous_queries(_CATALOG.value, layout_lib.load_item_ids(spec),
                                                 polysemy)
        unseen, seen = senses.split_by_training(queries, eval_set.queries)
    which = "all" if _MULTI_TYPE.value else _QUERIES.value
    queries = {"unseen": unseen, "seen": seen, "all": queries}[which]
    if not queries:
        raise app.UsageError(f"no {which} polysemous query in {_LAYOUT.value} (unseen: "
                             f"{len(unseen)}, seen: {len(seen)}); generate the catalog with "
                             "--polysemous_brands=N for held-out ones, or pass --queries=all")
    print(f"{len(queries)} {which} polysemous queries (of {len(unseen)} unseen, "
          f"{len(seen)} seen)")
    print("polysemous queries: " + "; ".join(
        f"{q.text}: " + ", ".join(f"{i} ({len(r)} items)" for i, r in zip(q.intents, q.items))
        for q in queries[:40]))
    rows = []
    for entry in _MODELS.value:
        name, _, model_dir = entry.partition(":")
        rows += _one_model(name, model_dir, spec, eval_set, queries, ks)
    cols = [f"{m}@{k}" for k in ks for m in ("sense_recall", "covered", "purity",
                                             "distinct_head_senses")]
    print("| model | " + " | ".join(cols + list(OVERALL))
          + " | paired vs first (covered@100, R@100, nDCG@10) |")
    print("|---" * (len(cols) + len(OVERALL) + 2) + "|")
    base = rows[0]["per_request"] if rows else None
    for row in rows:
        tests = []
        if row is not rows[0] and row["per_request"] is not None:
            if "covered@100" in row["covered"]:
                r = paired.paired_test(row["covered"]["covered@100"],
                                       rows[0]["covered"]["covered@100"], "covered@100")
                tests.append(f"{r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}] p={r.p_value:.3f}")
            for m in ("recall@100", "ndcg@10"):
                r = paired.paired_test(row["per_request"][m], base[m], m)
                tests.append(f"{r.diff:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}] p={r.p_value:.3f}")
        print(f"| {row['name']} | " + " | ".join(f"{row['senses'][c]:.3f}" for c in cols) + " | "
              + " | ".join(f"{row['overall'][m]:.4f}" for m in OVERALL) + " | "
              + ("; ".join(tests) or "-") + " |")
    for row in rows:
        for d in row["detail"]:
            print(f"  {row['name']} {d['q']} @{d['k']}: recall "
                  + "/".join(f"{x:.2f}" for x in d["recall"])
                  + f" covered={d['covered']} purity "
                  + "/".join(f"{x:.2f}" for x in d["purity"])
                  + " senses " + "/".join(str(s) for s in d["sense"]))
    if _JSON.value:
        with open(_JSON.value, "w", encoding="utf-8") as f:
            json.dump([{k: v for k, v in r.items() if k != "per_request"} for r in rows], f,
                      indent=1, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
