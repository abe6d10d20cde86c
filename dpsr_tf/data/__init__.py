"""Training data: the three-file input format, `dpsr prepare`, the layout and its input fns.

Modules (one job each):
  schema     columns, labels, rejection reasons and reports of the three input files
  readers    TSV/CSV readers that report bad rows with file:line instead of raising
  split      the deterministic train/eval split (query hash, the dashboard rule; or time)
  rows       per-row and per-id validation (the checks both prepare paths call)
  prepare    validate the files, tokenize item titles and queries once, write the layout
  derived_tables  token ids, user histories, human negatives (both prepare paths)
  layout_writer   the layout's files, layout.json and the report (both prepare paths)
  beam/      the same prepare as an Apache Beam pipeline (`dpsr prepare --runner=...`)
  layout     LayoutSpec + numpy readers of the layout (item table, id map, eval sets)
  pipeline   tf.data input fns for the Estimator (in-graph joins from tables loaded once)
  hard_negative_table  the mined per-query hard negatives in a model directory (files only)
  graph/     the click graph of a layout (`dpsr prepare --graph`): nodes, top-N and two-hop lists
  converters real datasets (Home Depot, Best Buy, MovieLens 100K, JDsearch) -> three files

pipeline imports TensorFlow; import it explicitly (`from dpsr_tf.data import pipeline`).
Write a layout with `from dpsr_tf.data import prepare; prepare.prepare(PrepareConfig(...))`.
"""
from dpsr_tf.data.layout import (EvalSet, FeatureTable, LayoutSpec, load_eval_set,
                                 load_item_id_map, load_item_ids, load_item_table,
                                 load_labeled_pairs, load_layout_spec, load_queries,
                                 load_user_table, read_records)
from dpsr_tf.data.prepare import PrepareConfig, PrepareError
from dpsr_tf.data.schema import SchemaError
from dpsr_tf.data.split import SplitConfig, is_eval_query

__all__ = [
    "EvalSet", "FeatureTable", "LayoutSpec", "PrepareConfig", "PrepareError", "SchemaError",
    "SplitConfig", "is_eval_query", "load_eval_set", "load_item_id_map", "load_item_ids",
    "load_item_table", "load_labeled_pairs", "load_layout_spec", "load_queries",
    "load_user_table", "read_records",
]
