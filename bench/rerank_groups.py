"""DPR's feature groups against XGBoost on the same sessions: session AUC and NDCG@5 of DPR
numeric-only, numeric + text and numeric + text + user (profile and click stream), XGBoost
rank:pairwise on the numeric features and on numeric + hashed sparse features
(dpsr_tf/ranking/sparse_features.py), over several training seeds, with paired tests over the
eval sessions (dpsr_tf/evaluation/paired.py) and the training time of each.

    python bench/rerank_groups.py --sessions_dir=S --dpsr_model_dir=M --dpsr_index_dir=I \\
        --work=/tmp/rerank_groups --seeds=0,1,2 --train_steps=1000 --token_embedding_dim=8 \
        --combiner=mean --user_embedding_dim=4 --history_embedding_dim=4 --profile_cross \
        --xgboost_rounds=auto [--validation=layout]

--optimizer/--learning_rate/--profile_cross set the DPR training (--numeric_* give numeric-only
DPR its own); --with_previous adds all groups with the previous setting (Adagrad 0.05, no
cross). --validation=query_hash scores on a query-hash seventh of the TRAIN sessions, trained on the rest
(ranking/validation.py): where the settings are chosen, never on the eval sessions;
--validation=layout holds out the sessions of the layout's validation queries instead, with
features made as the eval split's (statistics of the kept sessions, out-of-sample DPSR scores).
--xgboost_rounds=auto picks each XGBoost's rounds (of 10, 20, 50, 100, 200, 300) by session AUC
on a query-hash seventh of the TRAIN sessions, trained on the rest (never on the eval sessions);
--reuse scores the DPR models already in --work instead of training them again.

Prints one JSON object: per system the mean and standard deviation over seeds of each metric
and of the training seconds, and the paired tests of the full DPR against each other system,
per seed and on the per-session metrics averaged over the seeds ("pooled").
"""
import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GROUPS = {"dpr_numeric": ("numeric",), "dpr_numeric_text": ("numeric", "text"),
          "dpr_full": ("numeric", "text", "user")}
METRICS = ("session_auc", "ndcg@5")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions_dir", required=True)
    ap.add_argument("--dpsr_model_dir", required=True)
    ap.add_argument("--dpsr_index_dir", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train_steps", type=int, default=1000)
    ap.add_argument("--token_embedding_dim", type=int, default=8)
    ap.add_argument("--combiner", default="mean")
    ap.add_argument("--user_embedding_dim", type=int, default=4)
    ap.add_argument("--history_embedding_dim", type=int, default=4)
    ap.add_argument("--optimizer", default="adagrad")
    ap.add_argument("--learning_rate", type=float, default=0.05)
    ap.add_argument("--profile_cross", action="store_true")
    ap.add_argument("--numeric_optimizer", default=None,
                    help="optimizer of dpr_numeric (default: --optimizer), with "
                         "--numeric_learning_rate: numeric-only DPR at its own best setting")
    ap.add_argument("--numeric_learning_rate", type=float, default=None)
    ap.add_argument("--with_previous", action="store_true",
                    help="also train dpr_full_previous: all groups with Adagrad 0.05 and no "
                         "profile cross (the training time and quality beside the new setting)")
    ap.add_argument("--xgboost_rounds", default="300", help="rounds, or auto")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--validation", choices=["", "query_hash", "layout"], default="")
    ap.add_argument("--sparse_buckets", type=int, default=4096)
    ap.add_argument("--cross_embedding_dim", type=int, default=0)
    ap.add_argument("--hidden_units", default="128,64,32")
    ap.add_argument("--max_pairs_per_session", type=int, default=32)
    ap.add_argument("--train_auc", action="store_true",
                    help="also score each DPR on its own training sessions (fit against "
                         "held-out: under- or over-fitting)")
    ap.add_argument("--state", default="",
                    help="also write the per-session metrics, seconds and settings of this run "
                         "to this JSON file (seeds run as separate processes)")
    ap.add_argument("--merge", default="",
                    help="comma-separated --state files: report them together (the seeds of "
                         "all), training nothing")
    ap.add_argument("--systems", default="",
                    help="comma-separated subset of the systems to run (default all); "
                         "dpr_full is always run, the others are what it is paired against")
    args = ap.parse_args()
    if args.merge:
        _report(*_merge(args.merge.split(",")))
        return
    wanted = set(filter(None, args.systems.split(","))) | {"dpr_full"}
    # pylint: disable=import-outside-toplevel
    import tensorflow as tf
    from dpsr_tf.ranking import baselines, metrics, sparse_features, validation
    from dpsr_tf.ranking import model as model_lib
    from dpsr_tf.ranking import train as train_lib
    tf.get_logger().setLevel("ERROR")
    quiet = lambda *_: None
    data = train_lib.prepare_ranker_data(args.sessions_dir, args.dpsr_model_dir,
                                         args.dpsr_index_dir, os.path.join(args.work, "base"),
                                         log=quiet)
    if args.validation == "query_hash":
        data = validation.carve(data)
    elif args.validation == "layout":
        data = validation.carve_like_eval(data, args.dpsr_model_dir, log=quiet)
    spec, ev, tr = data.layout_spec, data.eval_sessions, data.train_sessions
    user_cfg = train_lib.user_config(spec)
    xgboost_wanted = not args.systems or bool(wanted & {"xgboost_numeric", "xgboost_sparse"})
    sparse = [sparse_features.sparse_features(f, t, data.titles, model_lib.default_tokenizer(),
                                              u, user_cfg["user_vocab_sizes"],
                                              args.sparse_buckets)
              for f, t, u in ((data.train_features, tr, data.train_users),
                              (data.eval_features, ev, data.eval_users))
              if xgboost_wanted]
    rounds = {"xgboost_numeric": args.xgboost_rounds, "xgboost_sparse": args.xgboost_rounds}
    if args.xgboost_rounds == "auto" and xgboost_wanted:
        rounds = _choose_rounds(data, sparse)
    per = {}        # system -> seed -> {metric: [S'] values}
    seconds = {}    # system -> [seconds per seed]
    train_auc = {}  # system -> [session AUC on its training sessions per seed] (--train_auc)
    systems = {name: (groups, {"optimizer": args.optimizer,
                               "learning_rate": args.learning_rate,
                               "profile_cross": args.profile_cross,
                               "cross_embedding_dim": args.cross_embedding_dim})
               for name, groups in GROUPS.items()}
    if args.numeric_optimizer:
        systems["dpr_numeric"][1].update(optimizer=args.numeric_optimizer,
                                         learning_rate=args.numeric_learning_rate)
    if args.with_previous:
        systems["dpr_full_previous"] = (GROUPS["dpr_full"], {
            "optimizer": "adagrad", "learning_rate": 0.05, "profile_cross": False,
            "cross_embedding_dim": 0})
    if args.systems:
        systems = {n: v for n, v in systems.items() if n in wanted}
    baselines_run = [n for n in ("xgboost_numeric", "xgboost_sparse")
                     if not args.systems or n in wanted]
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, (groups, training) in systems.items():
            model_dir = os.path.join(args.work, f"{name}_s{seed}")
            config = model_lib.RankerConfig(seed=seed, feature_groups=groups,
                                            token_embedding_dim=args.token_embedding_dim,
                                            combiner=args.combiner,
                                            user_embedding_dim=args.user_embedding_dim,
                                            history_embedding_dim=args.history_embedding_dim,
                                            hidden_units=tuple(
                                                int(x) for x in args.hidden_units.split(",")),
                                            max_pairs_per_session=args.max_pairs_per_session,
                                            dpsr_model_dir=args.dpsr_model_dir,
                                            dpsr_index_dir=args.dpsr_index_dir, **training,
                                            **user_cfg)
            start = time.monotonic()
            if not (args.reuse and os.path.isdir(model_dir)):
                train_lib.train_ranker(data, model_dir, config, args.train_steps, log=quiet)
                seconds.setdefault(name, []).append(time.monotonic() - start)
            scores = train_lib.predict_scores(model_dir, data, ev, data.eval_features)
            per.setdefault(name, {})[seed] = metrics.per_session(scores, ev.labels, ev.splits)
            if args.train_auc:
                fit = train_lib.predict_scores(model_dir, data, tr, data.train_features,
                                               users=data.train_users)
                train_auc.setdefault(name, []).append(round(metrics.session_metrics(
                    fit, tr.labels, tr.splits)["session_auc"], 4))
        for name in baselines_run:
            x_train, x_eval = ((data.train_features, data.eval_features)
                               if name == "xgboost_numeric" else sparse)
            start = time.monotonic()
            booster = baselines.train_xgboost(x_train, tr.labels, tr.splits, "rank:pairwise",
                                              rounds=int(rounds[name]), seed=seed)
            seconds.setdefault(name, []).append(time.monotonic() - start)
            pred = baselines.predict(booster, x_eval)
            per.setdefault(name, {})[seed] = metrics.per_session(pred, ev.labels, ev.splits)
        print(f"seed {seed} done", file=sys.stderr, flush=True)
    training = {n: t for n, (_, t) in systems.items()}
    if args.state:
        with open(args.state, "w", encoding="utf-8") as f:
            json.dump({"per": {n: {str(k): {m: v.tolist() for m, v in x.items()}
                                   for k, x in by_seed.items()} for n, by_seed in per.items()},
                       "seconds": seconds, "train_auc": train_auc, "rounds": rounds,
                       "training": training}, f)
    _report(per, seconds, train_auc, rounds, training)


def _merge(paths):
    """(per, seconds, train_auc, rounds, training) of several --state files, seeds joined."""
    per, seconds, train_auc = {}, {}, {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        for name, by_seed in state["per"].items():
            for seed, m in by_seed.items():
                per.setdefault(name, {})[int(seed)] = {k: np.asarray(v) for k, v in m.items()}
        for name, x in state["seconds"].items():
            seconds.setdefault(name, []).extend(x)
        for name, x in state["train_auc"].items():
            train_auc.setdefault(name, []).extend(x)
    return per, seconds, train_auc, state["rounds"], state["training"]


def _report(per, seconds, train_auc, rounds, training):
    """Prints the JSON report of the module docstring."""
    # pylint: disable=import-outside-toplevel
    from dpsr_tf.evaluation import paired
    out = {"eval_sessions": int(len(per["dpr_full"][next(iter(per["dpr_full"]))]
                                    ["session_auc"])),
           "xgboost_rounds": rounds, "training": training,
           "systems": {}, "paired": [], "train_session_auc": train_auc}
    for name, by_seed in per.items():
        means = {m: [float(v[m].mean()) for v in by_seed.values()] for m in METRICS}
        out["systems"][name] = {
            **{m: [round(float(np.mean(x)), 4), round(float(np.std(x, ddof=1))
                                                      if len(x) > 1 else 0.0, 4)]
               for m, x in means.items()},
            "per_seed": {m: [round(x, 4) for x in xs] for m, xs in means.items()},
            "train_seconds": ([round(float(np.mean(seconds[name])), 1),
                               round(float(np.std(seconds[name])), 1)]
                              if seconds.get(name) else None)}
    full = per["dpr_full"]
    for other in [n for n in per if n != "dpr_full"]:
        for m in METRICS:
            for seed in full:
                out["paired"].append({"seed": seed, **dataclasses.asdict(paired.paired_test(
                    full[seed][m], per[other][seed][m], m, "dpr_full", other))})
            pooled_a = np.mean([full[s][m] for s in full], axis=0)
            pooled_b = np.mean([per[other][s][m] for s in full], axis=0)
            out["paired"].append({"seed": "pooled", **dataclasses.asdict(paired.paired_test(
                pooled_a, pooled_b, m, "dpr_full", other))})
    print(json.dumps(out, indent=1))


def _choose_rounds(data, sparse) -> dict:
    """{baseline: rounds} with the best session AUC on a query-hash seventh of TRAIN."""
    import hashlib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.ranking import baselines, metrics  # pylint: disable=import-outside-toplevel
    tr = data.train_sessions
    held = np.array([int(hashlib.md5(q.encode()).hexdigest(), 16) % 7 == 0
                     for q in tr.queries])
    cand = np.repeat(held, np.diff(tr.splits))
    fit_splits = np.concatenate([[0], np.cumsum(np.diff(tr.splits)[~held])])
    held_splits = np.concatenate([[0], np.cumsum(np.diff(tr.splits)[held])])
    out = {}
    for name, x in (("xgboost_numeric", data.train_features), ("xgboost_sparse", sparse[0])):
        booster = baselines.train_xgboost(x[np.flatnonzero(~cand)], tr.labels[~cand],
                                          fit_splits, "rank:pairwise", rounds=300, seed=0)
        import xgboost  # pylint: disable=import-outside-toplevel
        dm = xgboost.DMatrix(x[np.flatnonzero(cand)])
        auc = {r: metrics.session_metrics(booster.predict(dm, iteration_range=(0, r)),
                                          tr.labels[cand], held_splits)["session_auc"]
               for r in (10, 20, 50, 100, 200, 300)}
        out[name] = max(auc, key=auc.get)
        print(f"{name}: held-out session AUC by rounds {auc}", file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    main()
