"""The SavedModel writer: one servable that fuses the query tower with the search ops.

Modules (import them directly; this file re-exports nothing):
  stages/             one module per query-time stage (spelling, tokenization, query tower,
                      dense search, rewrites, lexical fusion, response, re-rank, ...);
                      stages/pipeline.py lists them in order and composes ServableConfig
  servable_graph      composes the stages into the serving graph
  saved_model_export  model dir + index dir -> a TF Serving version directory (`dpsr export`)
  servable_info       assets.extra/dpsr_servable.json: what a servable holds
  warmup              the TF Serving warm-up file (assets.extra/tf_serving_warmup_requests)
"""
