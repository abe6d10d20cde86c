"""dpsr rewrite: a trained rewriter's rewrites of a query list -> a rewrite table (TSV).

    dpsr rewrite --rewriter_dir=R --queries=queries.txt --output=rewrites.tsv \
        --index_dir=I --strategy=sample --num_rewrites=8 --max_rewrites=3 --seed=0

Queries come from --queries (one per line) and/or the distinct queries of --layout_dir's
--layout_split. With --index_dir, rewrites the build's lexical index finds nothing for are
dropped; rewrites with the query's own units always are. Format: dpsr_tf/rewriting/table.py.

--model_dir=M --index_dir=I (--title_source=dense, the default when --model_dir is given): the
forward model picks the title among the DPSR model's --num_titles top catalog items instead of
generating one (a small rewriter's generated titles are generic), and the cycle filter keeps
only rewrites whose lexical top --cycle_k (100) holds that item (docs/results.md, "Query
rewriting (synonym recall)").
"""
import time

from absl import flags

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.model.progress import quiet_tf_logging
from dpsr_tf.rewriting import generate, table
from dpsr_tf.rewriting.lexical_filter import lexical_cycle_fn, lexical_hit_fn, lexical_shared_fn
from dpsr_tf.rewriting.title_candidates import CYCLE_K, NUM_TITLES, DenseTitleSource

_REWRITER = flags.DEFINE_string("rewriter_dir", None, "dpsr train-rewriter --model_dir.")
_QUERIES = flags.DEFINE_string("queries", None, "Query file, one query per line.")
_LAYOUT = flags.DEFINE_string("layout_dir", None, "Also rewrite this layout's queries.")
_SPLIT = flags.DEFINE_string("layout_split", "train", "Which split's queries of --layout_dir.")
_OUTPUT = flags.DEFINE_string("output", None, "The rewrite table to write.")
_INDEX = flags.DEFINE_string("index_dir", None, "Index build with a lexical index: drop "
                             "rewrites without a lexical hit.")
_STRATEGY = flags.DEFINE_enum("strategy", "sample", ["greedy", "beam", "sample"],
                              "Decoding of the backward model.")
_NUM = flags.DEFINE_integer("num_rewrites", 8, "Candidates decoded per query.")
_MAX = flags.DEFINE_integer("max_rewrites", 3, "Rewrites kept per query after the filters "
                            "(0 = all).")
_TITLE_BEAM = flags.DEFINE_integer("title_beam", 4, "Beam width of the title search.")
_TOP_K = flags.DEFINE_integer("top_k", 20, "Sampling: the k most probable units (0 = all).")
_TOP_P = flags.DEFINE_float("top_p", 0.9, "Sampling: nucleus mass.")
_TEMP = flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_MIN_SHARED = flags.DEFINE_integer(
    "min_shared", 0, "Query-consistency filter (needs --index_dir): keep a rewrite only when "
    "its lexical top --shared_k shares at least this many items with the query's own top "
    "--shared_k (0 = off).")
_SHARED_K = flags.DEFINE_integer("shared_k", 10, "Depth of the lists compared by --min_shared.")
_NO_REPEAT = flags.DEFINE_bool("no_repeat", True, "A rewrite never repeats a unit.")
_TITLE_SOURCE = flags.DEFINE_enum(
    "title_source", "auto", ["auto", "generated", "dense"],
    "Where the title the rewrites are decoded from comes from: 'generated' (the forward "
    "model's beam search, the paper's path) or 'dense' (the forward model ranks the DPSR "
    "model's --num_titles top catalog items; needs --model_dir and --index_dir; the measured "
    "best). 'auto': dense when --model_dir is given, else generated.")
_MODEL = flags.DEFINE_string("model_dir", None, "--title_source=dense: the DPSR model whose "
                             "top items are the candidate titles (dpsr train --model_dir).")
_NUM_TITLES = flags.DEFINE_integer("num_titles", NUM_TITLES, "--title_source=dense: candidate "
                                   "titles per query.")
_CYCLE_K = flags.DEFINE_integer(
    "cycle_k", -1, "--title_source=dense: keep a rewrite only when its lexical top cycle_k "
    f"holds the catalog item it was decoded from (0 = off; -1 = {CYCLE_K} with dense "
    "titles, off with generated ones).")
flags.mark_flags_as_required(["rewriter_dir", "output"])


def _queries():
    out = []
    if _QUERIES.value:
        with open(_QUERIES.value, encoding="utf-8") as f:
            out += [line.strip() for line in f if line.strip()]
    if _LAYOUT.value:
        spec = layout_lib.load_layout_spec(_LAYOUT.value)
        texts = layout_lib.load_queries(spec)
        rows = layout_lib.read_records(spec, _SPLIT.value)["query_row"]
        out += [texts[r] for r in dict.fromkeys(rows.tolist())]
    if not out:
        raise ValueError("no queries: give --queries and/or --layout_dir")
    return list(dict.fromkeys(out))


def _dense_titles(queries):
    """(candidate titles per query or None, the cycle filter or None) of the title flags."""
    title_source = _TITLE_SOURCE.value
    if title_source == "auto":
        title_source = "dense" if _MODEL.value else "generated"
    if _CYCLE_K.value < -1:
        raise ValueError(f"--cycle_k must be >= 0 (or -1 for the default), got "
                         f"{_CYCLE_K.value}")
    if title_source == "generated":
        for name, value in (("--model_dir", _MODEL.value),
                            ("--cycle_k", max(_CYCLE_K.value, 0))):
            if value:
                raise ValueError(f"{name} is for --title_source=dense (the generated title "
                                 f"is no catalog item)")
        return None, None
    if not _MODEL.value or not _INDEX.value:
        why = " (auto: --model_dir is given)" if _TITLE_SOURCE.value == "auto" else ""
        raise ValueError(f"--title_source=dense{why} needs --model_dir (a DPSR model) and "
                         "--index_dir (its `dpsr index` build: the item embeddings)")
    if _NUM_TITLES.value < 1:
        raise ValueError(f"--num_titles must be >= 1, got {_NUM_TITLES.value}")
    cycle_k = CYCLE_K if _CYCLE_K.value < 0 else _CYCLE_K.value
    source = DenseTitleSource(_MODEL.value, _INDEX.value, _LAYOUT.value)
    start = time.time()
    titles = source.top_titles(queries, _NUM_TITLES.value)
    print(f"rewrite: the DPSR model's top {_NUM_TITLES.value} titles of {len(queries)} queries "
          f"in {time.time() - start:.1f}s (--title_source={_TITLE_SOURCE.value}); cycle filter: "
          + (f"lexical top {cycle_k}" if cycle_k else "off"))
    finds = (lexical_cycle_fn(_INDEX.value, cycle_k, source.items_of_title())
             if cycle_k else None)
    return titles, finds


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"dpsr rewrite: unexpected arguments {argv[1:]}")
    quiet_tf_logging()
    try:
        decode = generate.DecodeConfig(_STRATEGY.value, _NUM.value, _TITLE_BEAM.value,
                                       _TOP_K.value, _TOP_P.value, _TEMP.value, _SEED.value,
                                       _NO_REPEAT.value)
        decode.validate()
        queries = _queries()
        has_hits, shared = None, None
        if _MIN_SHARED.value < 0 or _SHARED_K.value < 1:
            raise ValueError(f"--min_shared must be >= 0 and --shared_k >= 1, got "
                             f"{_MIN_SHARED.value}, {_SHARED_K.value}")
        if _MIN_SHARED.value and not _INDEX.value:
            raise ValueError("--min_shared needs --index_dir (the lexical index it compares "
                             "lists of)")
        titles, finds_title = _dense_titles(queries)
        if _INDEX.value:
            has_hits = lexical_hit_fn(_INDEX.value)
            if _MIN_SHARED.value:
                shared = lexical_shared_fn(_INDEX.value, _SHARED_K.value)
        start = time.time()
        rows = generate.Rewriter(_REWRITER.value).rewrite(queries, decode, titles=titles)
        seconds = time.time() - start
        rows = generate.filter_rewrites(rows, has_hits, _MAX.value, shared, _MIN_SHARED.value,
                                        finds_title)
        lines = table.write_table(_OUTPUT.value, [
            (r.query, [(w.text, w.score) for w in r.rewrites]) for r in rows])
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"dpsr rewrite: {e}") from None
    with_any = sum(1 for r in rows if r.rewrites)
    print(f"wrote {_OUTPUT.value}: {lines} rewrites of {with_any}/{len(rows)} queries "
          f"(generation {seconds:.1f}s, {len(rows) / max(seconds, 1e-9):.1f} queries/s)")
