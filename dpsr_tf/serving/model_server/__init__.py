"""`dpsr serve`: the TF-Serving-API model server (docs/serving.md).

  server            the process: gRPC + REST ports, config polling, draining on SIGTERM
  server_core       requests -> batches -> the loaded version's session; the request budgets
  manager           versions on disk -> loaded servables (policies, labels, reloads)
  servable          one SavedModel version (session, signatures, warm-up replay)
  tflite_servable   one TFLite version; servable_factory picks the kind from the directory
  signatures        signature lookup and TF Serving's messages for a missing one
  predict           PredictRequest -> checked input tensors (limits, dtypes, shapes)
  batching          the batcher (TF Serving's batching parameters)
  inference         Classify / Regress / MultiInference over tf.Example inputs
  grpc_services     PredictionService and ModelService
  rest, http_body, json_body   the REST gateway, its body reading and bounded JSON decoding
  run_queue         per-client fair queues that drop expired or cancelled work
  unsent_answers    budgets of answers computed but not yet read by their clients
  warmup            replay of assets.extra/tf_serving_warmup_requests at load
  profiler_service  TensorFlow's ProfilerService on the gRPC port
"""
