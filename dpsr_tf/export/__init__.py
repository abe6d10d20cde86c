"""The SavedModel writer: one servable that fuses the query tower with the search ops.

Modules (import them directly; this file re-exports nothing):
  servable_graph      the serving graph: tokenize -> query tower -> search ops -> fusion
  rerank_stage        the optional DPR re-rank stage appended to the serving graph
  saved_model_export  model dir + index dir -> a TF Serving version directory (`dpsr export`)
  graph_lookup        searchgcn servables: query text -> its click-graph lists (asset hash table)
  warmup              the TF Serving warm-up file (assets.extra/tf_serving_warmup_requests)
"""
