"""`dpsr prepare` on Apache Beam: the single-process layout written by a pipeline of workers.

Modules (one job each):
  prepare_pipeline   the launcher: checks, settings (BeamSettings), runs the pipeline, assembles
  stages             the Beam graph: a chain of stages that carry task descriptors and metadata
  job                what every task knows (Job), partition and range keys, the record format
  files              partitioned intermediate files and layout pieces, through Beam FileSystems
  meta               the small metadata merged between stages (counts, vocabularies, reports)
  table_tasks        items/users: read, resolve ids, number rows, tokens, pseudo-queries
  interaction_tasks  interactions: join items and users, verdict, per query, per user
  numbering          first-appearance row numbers and record order by ranges
  report             the rejection report of a file, merged across tasks (ReportFn)
  layout_assembly    the launcher's last step: pieces -> the layout's files

Imports Apache Beam; import it only where a Beam runner is asked for.
"""
from dpsr_tf.data.beam.prepare_pipeline import RUNNERS, BeamSettings, prepare_beam

__all__ = ["RUNNERS", "BeamSettings", "prepare_beam"]
