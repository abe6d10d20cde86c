"""`dpsr serve`: the TF-Serving-API model server (docs/serving.md).

  server      the process: gRPC + REST ports, config polling, draining on SIGTERM
  api/        the API: each call once (server_core), its gRPC and REST transports
  runs/       running a signature: batches, per-client run queues, chunks, answer budgets
  lifecycle/  model versions: directories -> loaded servables, their signatures, warm-up files
A room imports only the rooms listed below it (tests/architecture/test_import_layers.py).
"""
