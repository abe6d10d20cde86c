"""DPSR serving: a TF-Serving-API model server for DPSR SavedModels and the sharding proxy.

  model_server/  `dpsr serve`: servables, batching, the gRPC services and the REST gateway
  proxy/         `dpsr proxy`: routing to replicas, fan-out to shards, the merge of their answers
  the modules here are shared by both: errors and their gRPC codes, tensors and the wire
  format, config files, gRPC call plumbing, start-up, metrics, gone clients, the limits
  derived from the machine's cores.
docs/serving.md describes both programs, their flags and config files; its last table maps each
module to its role. This file imports nothing, so importing one module loads only what it needs.
"""
