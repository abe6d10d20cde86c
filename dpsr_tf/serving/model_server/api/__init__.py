"""The model server's API: what each call does, and the gRPC and REST transports that carry it.

  server_core       each call once (Predict, metadata, status, Classify/Regress, reload)
  predict           PredictRequest -> checked input tensors (limits, dtypes, shapes); response
  inference         Classify / Regress / MultiInference over tf.Example inputs
  warmup_replay     warm-up records replayed through the request path at load
  grpc_services     PredictionService and ModelService
  rest              the REST gateway: routes, HTTP status codes, answers written whole
  http_head         REST request heads read within a time and a size limit
  http_body         REST bodies read within a size limit and a server-wide byte budget
  rest_json         TF Serving's REST JSON: bodies parsed within limits, JSON <-> tensors
  profiler_service  TensorFlow's ProfilerService on the gRPC port
"""
