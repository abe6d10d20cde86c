"""`dpsr report`: a static HTML page of a model's evaluation, curves, heads, embedding map,
alpha sweep and index numbers (docs/report.md).

Modules, one job each: config (ReportConfig), events (TensorBoard scalars), heads (per-head
usage), projection (t-SNE), purity (category purity@k), maps (every model's map and purity over
the same items), sweep (the alpha sweep), searchgcn (whether a SearchGCN model's click graph
suits it), commands (command lines), gather (every number,
once), figures (matplotlib PNGs), page (the HTML), build (all of it into a directory).
"""
from dpsr_tf.report.build import build_report
from dpsr_tf.report.config import ReportConfig

__all__ = ["ReportConfig", "build_report"]
