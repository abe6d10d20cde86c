"""`dpsr prepare` on Apache Beam: the single-process layout written by a pipeline of workers.

Modules (one job each):
  prepare_pipeline  the pipeline (read, validate, tokenize, join, write) and its launcher
  ranks             dense row numbers by file order without a global sort (AssignRows)
  report            the rejection report of a file, merged across workers (ReportFn)
  blocks            table blocks written by workers and joined into the layout's files

Imports Apache Beam; import it only where a Beam runner is asked for.
"""
from dpsr_tf.data.beam.prepare_pipeline import RUNNERS, prepare_beam

__all__ = ["RUNNERS", "prepare_beam"]
