"""The online rewrite path's cost per request: the same hybrid servable exported with and
without `--online_rewriter`, its `lexical` and `serving_default` signatures called one query
at a time in this process (the graph's cost, no gRPC), the two exports alternated request by
request so that machine noise falls on both alike.

    python bench/online_rewrite_bench.py --model_dir=M --index_dir=I --rewriter_dir=R \
        --rewrites=TABLE --queries=200 --output=/tmp/online_bench

Queries are the layout's eval queries not in the table (the ones the online path decodes).
Prints per signature the median and p90 latency (ms) of each export and the ratio.
"""
import os
import time

import numpy as np
from absl import app, flags

_MODEL = flags.DEFINE_string("model_dir", None, "Trained DPSR model.")
_INDEX = flags.DEFINE_string("index_dir", None, "Its index build (with a lexical index).")
_REWRITER = flags.DEFINE_string("rewriter_dir", None, "dpsr train-rewriter directory.")
_TABLE = flags.DEFINE_string("rewrites", None, "Optional rewrite table (both exports).")
_QUERIES = flags.DEFINE_integer("queries", 200, "Requests per export and signature.")
_K = flags.DEFINE_integer("k", 100, "k of each request.")
_OUTPUT = flags.DEFINE_string("output", "/tmp/online_rewrite_bench", "Export folder.")
flags.mark_flags_as_required(["model_dir", "index_dir", "rewriter_dir"])


def _load(path):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow.python.saved_model import loader_impl  # pylint: disable=import-outside-toplevel
    from dpsr_tf import op_library  # pylint: disable=import-outside-toplevel
    op_library.load()
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=2,
                                      inter_op_parallelism_threads=2)
    session = tf.compat.v1.Session(graph=tf.Graph(), config=config)
    with session.graph.as_default():
        meta = loader_impl.SavedModelLoader(path).load(session, ["serve"])
    return session, meta


def main(argv):
    del argv
    import shutil  # pylint: disable=import-outside-toplevel
    from dpsr_tf.data import eval_set as eval_set_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.export.saved_model_export import export_servable  # pylint: disable=import-outside-toplevel
    from dpsr_tf.export.servable_graph import ServableConfig  # pylint: disable=import-outside-toplevel
    from dpsr_tf.model import model_dir as model_dir_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.rewriting import table as table_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.search.fusion import FusionConfig  # pylint: disable=import-outside-toplevel

    shutil.rmtree(_OUTPUT.value, ignore_errors=True)
    servable = ServableConfig(fusion=FusionConfig())
    paths = {}
    for name, rewriter in (("table only", None), ("online", _REWRITER.value)):
        start = time.perf_counter()
        paths[name] = export_servable(_MODEL.value, _INDEX.value,
                                      os.path.join(_OUTPUT.value, name.replace(" ", "_")),
                                      servable=servable, rewrite_table=_TABLE.value,
                                      online_rewriter=rewriter)
        print(f"exported {name}: {time.perf_counter() - start:.1f} s")
    _, spec = model_dir_lib.load_model_config(_MODEL.value)
    listed = set(table_lib.read_table(_TABLE.value)) if _TABLE.value else set()
    queries = [q for q in dict.fromkeys(eval_set_lib.load_eval_set(spec).queries)
               if table_lib.normalize_query(q) not in listed][:_QUERIES.value]
    loaded = {name: _load(p) for name, p in paths.items()}
    for signature in ("lexical", "serving_default"):
        times = {name: [] for name in loaded}
        for i, query in enumerate([queries[0]] * 5 + queries):   # 5 warm-up calls
            for name, (session, meta) in loaded.items():
                sig = meta.signature_def[signature]
                feeds = {sig.inputs["query"].name: [query], sig.inputs["k"].name: _K.value}
                start = time.perf_counter()
                session.run(sig.outputs["item_ids"].name, feeds)
                if i >= 5:
                    times[name].append((time.perf_counter() - start) * 1000)
        base = np.median(times["table only"])
        for name, t in times.items():
            print(f"{signature:16} {name:11} median {np.median(t):7.2f} ms  p90 "
                  f"{np.percentile(t, 90):7.2f} ms  ratio {np.median(t) / base:5.2f}  "
                  f"({len(t)} requests)")


if __name__ == "__main__":
    app.run(main)
