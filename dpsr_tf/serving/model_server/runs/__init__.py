"""Running a signature: who runs when, in which batch, and what waits or is dropped unrun.

  batching        the batcher (TF Serving's batching parameters)
  batch_queue     one batch key's queue, shared fairly by clients
  run_queue       per-client fair queues of unbatched runs; expired or cancelled work dropped
  run_times       the fastest run seen per key and size: what cannot finish is not started
  chunked_runs    large unbatched requests run in row chunks that stop once the caller gives up
  unsent_answers  budgets of answers computed but not yet read by their clients
"""
