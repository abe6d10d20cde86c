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
  layout     LayoutSpec, layout.json + numpy readers of the layout (tables, id map, records)
  eval_set   a split's evaluation requests (the dashboard protocol) and labelled pairs
  table_join the layout's tables read in-graph once, joined with each batch of records
  pipeline   tf.data input fns for the Estimator (record streams, pseudo-query mix, batches)
  hard_negative_table  the mined per-query hard negatives in a model directory (files only)
  graph/     the click graph of a layout (`dpsr prepare --graph`): nodes, top-N and two-hop lists
  converters real datasets (Home Depot, Best Buy, MovieLens 100K, JDsearch) -> three files

pipeline and table_join import TensorFlow; import them explicitly
(`from dpsr_tf.data import pipeline`).
Write a layout with `from dpsr_tf.data import prepare; prepare.prepare(PrepareConfig(...))`.
"""
from dpsr_tf.data.eval_set import EvalSet, load_eval_set, load_labeled_pairs
from dpsr_tf.data.layout import (FeatureTable, LayoutSpec, load_item_id_map, load_item_ids,
                                 load_item_table, load_layout_spec, load_queries,
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
