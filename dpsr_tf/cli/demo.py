"""dpsr demo: the whole DPSR path on the embedded synthetic catalog (`make demo`).

    1. tokenizer    the C++ tokenizer through pybind11 and the Dpsr>Tokenize op: same ids
    2. generate     the seeded synthetic catalog (items, users, clicks, ground truth)
    3. prepare      validate the three files, tokenize titles once, write the training layout
    4. train        a short tf.estimator run of a 2-head, personalized DPSR model
    5. evaluate     full-corpus Recall/nDCG/MRR on the eval split, beside BM25
    6. index        item tower over the catalog -> 2 FAISS index shards (IVF) and the BM25
                    index of the titles beside them; the fusion, the speller and dense
                    feedback chosen on the validation split as `dpsr export` chooses them; dense,
                    BM25 and hybrid as served
    7. rewrite      a short run of the cycle-consistent query rewriter (docs/rewriting.md)
                    on the layout's (query, clicked title) pairs; rewrites of the demo queries
                    decoded from the DPSR model's titles, kept when they find that title's
                    item again (the cycle filter), written as a rewrite table
    8. export       one hybrid SavedModel per shard (tokenizer + query tower + FAISS search +
                    BM25 search over the query and its rewrites, fused as chosen; with dense
                    feedback, the proxy's two rounds over the shards)
    9. serve        two model servers and the proxy as real processes; queries sent with the
                    TF Serving gRPC client; each query's top items with their source (dense,
                    lexical, both, rewrite) and the head that found them; the lexical list
                    alone (the `lexical` signature) with the items only a rewrite found;
                    everything shut down
   10. report       `dpsr report` of this run (docs/report.md): the page with the evaluation
                    table, training curves, per-head usage and the t-SNE map (no alpha sweep)

Everything goes under --work_dir (default build/demo), replaced on each run.
"""
import os
import shutil
import time

import tensorflow as tf
from absl import flags, logging

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data.prepare import PrepareConfig, prepare
from dpsr_tf.demo import synthetic_catalog as synthetic
from dpsr_tf.demo.serving_demo import query_model, run_serving_demo
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.evaluation import fusion_choice
from dpsr_tf.export.saved_model_export import export_all_shards
from dpsr_tf.export.servable_graph import ServableConfig
from dpsr_tf.indexing import catalog_index
from dpsr_tf.indexing.index_builder import IndexBuildConfig
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.report import ReportConfig, build_report
from dpsr_tf.rewriting import generate, table
from dpsr_tf.rewriting.config import RewriterConfig
from dpsr_tf.rewriting.lexical_filter import lexical_cycle_fn, lexical_hit_fn
from dpsr_tf.rewriting.title_candidates import CYCLE_K, NUM_TITLES, DenseTitleSource
from dpsr_tf.rewriting.train import train_rewriter
from dpsr_tf.search.dense_feedback import DEFAULT as DEFAULT_FEEDBACK, FeedbackConfig
from dpsr_tf.tokenization import Tokenizer, TokenizerConfig, tokenize_op
from dpsr_tf.training import driver
from dpsr_tf.training.config import TrainConfig

REWRITER_STEPS_DEFAULT = 300
# The demo's rewriter is small so that stage 7 stays quick: one layer of 64 / 128, a short
# warm-up to a higher rate for its 300 steps, and the 1,200 most frequent units (the synthetic
# titles' rarer model codes, "v67", become <unk>, which no rewrite holds). The synthetic-catalog
# figures of docs/results.md were made with a larger one (2 layers, 1,000 steps, every unit).
DEMO_REWRITER = dict(num_layers=1, d_model=64, ff_dim=128, warmup_steps=60, learning_rate=3e-3)
DEMO_REWRITER_UNITS = 1200
_WORK = flags.DEFINE_string("work_dir", "build/demo", "Where the demo writes (replaced).")
_ITEMS = flags.DEFINE_integer("num_items", 5000, "Synthetic catalog size.")
_USERS = flags.DEFINE_integer("num_users", 1000, "Synthetic users.")
_CLICKS = flags.DEFINE_integer("num_interactions", 60000, "Synthetic click rows.")
_STEPS = flags.DEFINE_integer("train_steps", 3000, "Training steps.")
_REWRITER_STEPS = flags.DEFINE_integer("rewriter_steps", REWRITER_STEPS_DEFAULT,
                                       "Query rewriter training steps (0: no rewrite stage).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Print every tokenizer feature.")

TOKENIZER_QUERIES = ["Apple iPhone 15 Pro", "苹果手机 256G", "ovivo phone case",
                     "Ｎｉｋｅ 跑步鞋 men", "cordless drill 20v"]
# "blackbery" matches no title word: its lexical list comes only through its rewrites.
DEMO_QUERIES = ["apple", "苹果", "apple phone", "fresh apple fruit", "mouse", "wireless mouse",
                "小米", "blackbery phone", "blackbery", "red running shoes women"]


def _stage(number: int, title: str) -> float:
    print(f"\n== {number}. {title} ==", flush=True)
    return time.monotonic()


def _done(start: float) -> None:
    print(f"   ({time.monotonic() - start:.1f}s)", flush=True)


def _tokenizer_stage() -> None:
    config = TokenizerConfig()
    tok = Tokenizer(config)
    ids, splits = tok.tokenize(TOKENIZER_QUERIES)
    ragged = tokenize_op.tokenize(tf.constant(TOKENIZER_QUERIES), config)
    for i, (query, keys) in enumerate(zip(TOKENIZER_QUERIES, tok.features(TOKENIZER_QUERIES))):
        py_ids = ids[splits[i]:splits[i + 1]].tolist()
        same = py_ids == ragged[i].numpy().tolist()
        shown = keys if _VERBOSE.value else keys[:8] + (["..."] if len(keys) > 8 else [])
        print(f"   {query!r}: {len(keys)} features, pybind11 vs op: "
              f"{'same ids' if same else 'MISMATCH'}")
        print("      " + " ".join(shown))
        if not same:
            raise SystemExit("demo failed: the pybind11 and TF op tokenizers disagree")


def _rewrite_stage(layout_dir: str, model_dir: str, index_dir: str, work: str, steps: int,
                   quiet):
    """Trains the rewriter briefly and writes the demo queries' rewrite table; its path.

    Rewrites come as `dpsr rewrite --title_source=dense --num_titles=4 --cycle_k=100` makes
    them (docs/rewriting.md, "Choosing the settings"): the forward model picks one of the DPSR
    model's top 4 titles, the backward model samples rewrites from it, and a rewrite is kept
    when its own lexical top 100 holds that title's item."""
    rewriter_dir = os.path.join(work, "rewriter")
    config = RewriterConfig(train_steps=steps, **DEMO_REWRITER)
    losses = train_rewriter(layout_dir, rewriter_dir, config, max_units=DEMO_REWRITER_UNITS,
                            log_every=max(1, steps // 4), save_every=steps, log=quiet)
    if losses:
        print("   teacher-forced losses on the eval split's pairs: "
              + ", ".join(f"{k} {v:.2f}" for k, v in sorted(losses.items())))
    source = DenseTitleSource(model_dir, index_dir, layout_dir)
    titles = source.top_titles(DEMO_QUERIES, NUM_TITLES)
    rows = generate.Rewriter(rewriter_dir).rewrite(DEMO_QUERIES, generate.DecodeConfig(),
                                                   log=None, titles=titles)
    rows = generate.filter_rewrites(
        rows, lexical_hit_fn(index_dir), 3,
        finds_title=lexical_cycle_fn(index_dir, CYCLE_K, source.items_of_title()))
    path = os.path.join(work, "rewrites.tsv")
    table.write_table(path, [(r.query, [(w.text, w.score) for w in r.rewrites]) for r in rows])
    for r in rows:
        shown = " | ".join(w.text for w in r.rewrites) or "(none kept)"
        print(f"   {r.query!r} -> (title {r.title!r}) -> {shown}")
    print(f"   {path}: the table the servables look rewrites up in")
    return path


def _print_rewrite_answers(hybrid_results, lexical_results, titles, fusion) -> None:
    """The items that only a rewrite found (source "rewrite"): in the lexical list alone (the
    `lexical` signature) and in the served hybrid answer."""
    found = [(r.query, rank, item) for r in lexical_results
             for rank, (item, source) in enumerate(zip(r.item_ids, r.sources), start=1)
             if source == "rewrite"]
    print("   the lexical list alone (signature 'lexical' through the proxy: BM25 of the query "
          "merged with its rewrites'):")
    if not found:
        print("   no item of a lexical top 10 came only through a rewrite in this run")
    by_query = {}
    for query, rank, item in found:
        by_query.setdefault(query, []).append((rank, item))
    for query, hits in by_query.items():
        print(f"   {query!r}: {len(hits)} of its lexical top 10 only through a rewrite (the "
              "query's own BM25 list lacks them), e.g.")
        for rank, item in hits[:2]:
            print(f"      #{rank}: {item}  {titles.get(item, '')}")
    in_hybrid = sum(s == "rewrite" for r in hybrid_results for s in r.sources)
    why = (" (the fusion chosen on this catalog's validation split weighs the lexical list 0: "
           "dense alone scored best, so no lexical-only item, rewrite or not, enters the hybrid)"
           if fusion.lexical_weight == 0 else "")
    print(f"   in the hybrid top 10s above: {in_hybrid} items only through a rewrite{why}")


def main(argv):
    del argv
    begin = time.monotonic()
    work = os.path.abspath(_WORK.value)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    quiet = lambda _: None  # noqa: E731  (library progress lines stay out of the demo output)
    # The demo prints its own summary; TF's deprecation chatter would drown it.
    logging.set_verbosity(logging.ERROR)
    tf.get_logger().setLevel("ERROR")

    t = _stage(1, "tokenizer: one C++ core, pybind11 and TF op side by side")
    _tokenizer_stage()
    _done(t)

    t = _stage(2, "generate the synthetic catalog")
    gen = synthetic.generate(synthetic.SyntheticConfig(
        num_items=_ITEMS.value, num_users=_USERS.value, num_interactions=_CLICKS.value, seed=0),
        os.path.join(work, "catalog"), log=quiet)
    print(f"   {gen.output_dir}: " + ", ".join(f"{k} {v}" for k, v in gen.counts.items()))
    _done(t)

    t = _stage(3, "dpsr prepare: validate, tokenize titles once, write the layout")
    spec = prepare(PrepareConfig(items=gen.items_path, users=gen.users_path,
                                 interactions=gen.interactions_path,
                                 output=os.path.join(work, "layout")), log=quiet)
    print(f"   {spec.layout_dir}: {spec.num_items} items, {spec.num_users} users, records "
          + ", ".join(f"{k} {v}" for k, v in spec.num_records.items())
          + f"; report in {layout_lib.REPORT_TXT}")
    _done(t)

    t = _stage(4, f"dpsr train: 2 query heads + user profile, {_STEPS.value} steps")
    model_config = ModelConfig(num_heads=2, personalization="profile", learning_rate=0.1)
    train = TrainConfig(layout_dir=spec.layout_dir, model_dir=os.path.join(work, "model"),
                        batch_size=128, train_steps=_STEPS.value,
                        save_checkpoints_steps=_STEPS.value, eval_steps=20, seed=0)
    os.environ.pop("TF_CONFIG", None)
    driver.train_and_evaluate(model_config, train)
    print(f"   checkpoints in {train.model_dir}")
    _done(t)

    t = _stage(5, "dpsr evaluate: full-corpus retrieval on the eval split")
    eval_cfg = evaluate_lib.EvalConfig(num_random=1024)
    dpsr = evaluate_lib.evaluate_model(train.model_dir, cfg=eval_cfg, log=quiet)
    bm25 = evaluate_lib.evaluate_bm25(spec.layout_dir, eval_cfg, log=quiet)
    print(f"   {'':8} " + " ".join(f"{m:>11}" for m in ("recall@10", "recall@100", "ndcg@10",
                                                          "mrr@10")))
    for name, got in (("DPSR", dpsr), ("BM25", bm25)):
        print(f"   {name:8} " + " ".join(f"{got[m]:>11.3f}" for m in (
            "recall@10", "recall@100", "ndcg@10", "mrr@10")))
    _done(t)

    t = _stage(6, "dpsr index: item tower -> 2 FAISS shards (IVF64,Flat) + BM25 shards")
    index_dir = os.path.join(work, "index")
    manifest = catalog_index.index_catalog(
        train.model_dir, index_dir, IndexBuildConfig(factory="IVF64,Flat", num_shards=2,
                                                     nprobe=16))
    print(f"   {index_dir}: {manifest.num_items} items in {manifest.num_shards} shards "
          f"({', '.join(str(s.num_items) for s in manifest.shards)}), "
          f"built in {manifest.build_seconds:.1f}s; BM25 over "
          f"{sum(s.num_terms for s in manifest.lexical.shards)} shard terms, built in "
          f"{manifest.lexical.build_seconds:.1f}s")
    # As `dpsr export` chooses (--dense_feedback=auto): every fusion without and with the
    # default dense feedback, on the validation split; then the chosen servable evaluated on
    # the eval split as `dpsr evaluate --hybrid` does.
    choice, spelling, scores, hybrid = fusion_choice.choose_and_evaluate(
        train.model_dir, index_dir, cfg=eval_cfg, log=quiet,
        feedbacks=(FeedbackConfig(), DEFAULT_FEEDBACK))
    print(f"   fusion chosen on the {choice.split} split among {len(choice.candidates)} "
          f"candidates: "
          f"{fusion_choice.describe(choice.config)}, {choice.feedback.describe()}; catalog "
          f"speller {'on' if spelling else 'off'} (objective {scores['with']:.4f} with it, "
          f"{scores['without']:.4f} without)")
    print("   as served (eval split): dense through the IVF shards"
          + (" (after dense feedback)" if choice.feedback.enabled else "")
          + ", BM25 through the lexical shards, and their fusion")
    print(f"   {'':8} " + " ".join(f"{m:>11}" for m in ("recall@10", "recall@100", "ndcg@10",
                                                          "mrr@10")))
    for name, got, prefix in (("dense", hybrid["dpsr"], "served_"),
                              ("BM25", hybrid["lexical"], ""), ("hybrid", hybrid["hybrid"], "")):
        print(f"   {name:8} " + " ".join(f"{got[prefix + m]:>11.3f}" for m in (
            "recall@10", "recall@100", "ndcg@10", "mrr@10")))
    _done(t)

    rewrites = None
    if _REWRITER_STEPS.value > 0:
        t = _stage(7, f"dpsr train-rewriter ({_REWRITER_STEPS.value} steps) + dpsr rewrite: "
                      "rewrites of the demo queries")
        rewrites = _rewrite_stage(spec.layout_dir, train.model_dir, index_dir, work,
                                  _REWRITER_STEPS.value, quiet)
        _done(t)

    t = _stage(8, "dpsr export: one hybrid SavedModel per shard"
               + (" (with the rewrite table)" if rewrites else ""))
    servables = export_all_shards(train.model_dir, index_dir,
                                  os.path.join(work, "models", "dpsr"),
                                  servable=ServableConfig(fusion=choice.config,
                                                          spelling=spelling,
                                                          dense_feedback=choice.feedback),
                                  fusion_choice=dict(choice.to_json(), spelling={
                                      "mode": "auto", "on": spelling, "scores": scores}),
                                  rewrite_table=rewrites)
    for path in servables:
        print(f"   {path}")
    _done(t)

    t = _stage(9, "dpsr serve x2 + dpsr proxy; queries with the TF Serving gRPC client")
    titles = dict(zip(layout_lib.load_item_ids(spec),
                      layout_lib.load_item_table(spec).titles))
    log_dir = os.path.join(work, "logs")
    os.makedirs(log_dir)
    lexical = []
    results = run_serving_demo(
        [os.path.dirname(p) for p in servables], DEMO_QUERIES, model_name="dpsr", k=10, show=5,
        item_text=titles, log_dir=log_dir,
        while_up=lambda stub: lexical.extend(query_model(stub, "dpsr", DEMO_QUERIES, k=10,
                                                         signature="lexical")))
    if rewrites:
        _print_rewrite_answers(results, lexical, titles, choice.config)
    _done(t)

    t = _stage(10, "dpsr report: the page of this run")
    report_dir = os.path.join(work, "report")
    report_cfg = ReportConfig(
        model_dirs=(train.model_dir,), output=report_dir, index_dir=index_dir,
        num_random=eval_cfg.num_random, seed=eval_cfg.seed, map_items=1000,
        command=f"dpsr report --model_dir={train.model_dir} --index_dir={index_dir} "
                f"--output={report_dir} --map_items=1000")
    # Stages 5 and 6 evaluated with the report's settings: their numbers are reused.
    page = build_report(report_cfg, log=quiet, evaluations={
        "models": [dpsr], "bm25": bm25, "hybrid": hybrid,
        "source": "`make demo` (its stages 5 and 6, the same split, seed and settings)"})
    print(f"   {page}")
    _done(t)
    print(f"\ndemo finished in {time.monotonic() - begin:.0f}s; everything is in {work}")
    print(f"report of this run: {page}")
