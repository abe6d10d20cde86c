"""`dpsr <subcommand> [--flags]`: dispatches to dpsr_tf/cli/<subcommand>.py.

Each subcommand module defines its own absl flags and a `main(argv)`; only the chosen module
is imported, so flags of different subcommands never clash and start-up stays fast.
"""
import importlib
import os
import sys

# FAISS and TF use OpenMP, whose default spin-waiting threads slow index builds down badly on busy
# cores (docs/indexing.md, "Building an index"). Read when libgomp loads, so set before any
# subcommand import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from absl import app

from dpsr_tf import parent_death

# subcommand -> (module, one-line help).
SUBCOMMANDS = {
    "tokenize": ("dpsr_tf.cli.tokenize", "show the features and ids of texts"),
    "vocab": ("dpsr_tf.cli.vocab", "build a vocabulary file from text files"),
    "demo": ("dpsr_tf.cli.demo", "run the embedded end-to-end demo"),
    "prepare": ("dpsr_tf.cli.prepare", "validate items/users/interactions, write a training layout"),
    "convert": ("dpsr_tf.cli.convert", "convert a public dataset to the three-file format"),
    "generate-synthetic": ("dpsr_tf.cli.generate", "write the seeded synthetic catalog"),
    "train": ("dpsr_tf.cli.train", "train a DPSR model (tf.estimator; TF_CONFIG for clusters)"),
    "launch-local": ("dpsr_tf.cli.launch_local", "run a training cluster on loopback"),
    "evaluate": ("dpsr_tf.cli.evaluate", "Top-k, AUC and full-corpus Recall/nDCG/MRR of a model"),
    "crossval": ("dpsr_tf.cli.crossval", "N-fold query-hash cross-validation: prepare, train, "
                 "evaluate each fold"),
    "compare": ("dpsr_tf.cli.compare", "request-by-request paired comparison of systems from "
                "`dpsr evaluate --per_query` files"),
    "index": ("dpsr_tf.cli.index", "item tower over the catalog -> FAISS index shards"),
    "export": ("dpsr_tf.cli.export", "model + index -> versioned SavedModel servable(s)"),
    "serve": ("dpsr_tf.cli.serve", "TF-Serving-API model server for DPSR SavedModels"),
    "proxy": ("dpsr_tf.cli.proxy", "PredictionService proxy: routes models, merges shard top-K"),
    "prepare-sessions": ("dpsr_tf.cli.prepare_sessions", "impressions + layout -> train/eval "
                         "sessions for the DPR ranker"),
    "generate-sessions": ("dpsr_tf.cli.generate_sessions", "simulated sessions over a "
                          "synthetic catalog -> impressions file"),
    "train-ranker": ("dpsr_tf.cli.train_ranker", "train DPR, the pairwise Siamese re-ranker"),
    "evaluate-ranker": ("dpsr_tf.cli.evaluate_ranker", "session AUC, NDCG@5/@10 of DPR vs "
                        "XGBoost on the eval sessions"),
    "report": ("dpsr_tf.cli.report", "static HTML report: quality vs BM25, curves, heads, "
               "t-SNE map, alpha sweep, index numbers"),
    "train-rewriter": ("dpsr_tf.cli.train_rewriter", "train the cycle-consistent query "
                       "rewriter on (query, clicked title) pairs"),
    "rewrite": ("dpsr_tf.cli.rewrite", "a rewriter's rewrites of a query file -> rewrite table"),
}


def _usage() -> str:
    lines = ["usage: dpsr <subcommand> [--flags]   (dpsr <subcommand> --helpfull for flags)", ""]
    lines += [f"  {name:<12} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def run(argv=None):
    parent_death.apply_from_env()
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in SUBCOMMANDS:
        print(f"dpsr: unknown subcommand '{name}'\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(SUBCOMMANDS[name][0])
    app.run(module.main, argv=[f"dpsr {name}"] + argv[2:])


if __name__ == "__main__":
    run()
