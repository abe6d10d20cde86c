"""The servable's query-time stages, one module each (pipeline.py lists them in order):

  base            the Stage interface, ExportSource, ExportFlag, asset and check helpers
  context         BuildContext: what the stages hand on while they build the graph
  pipeline        STAGES in order, and the ServableConfig their Config sections make
  request         query and k inputs, request limits
  spelling        Dpsr>SpellCorrect with the catalog speller
  tokenization    Dpsr>Tokenize
  graph_lookup    SearchGCN: the query's click-graph lists
  user_inputs     personalized models: user features and history
  query_tower     the m head embeddings; query_embedding
  dense_search    Dpsr>FaissSearch per head, dense feedback, head merge
  rewrites        the query's rewrites searched in the lexical index
  lexical_fusion  Dpsr>LexicalSearch (BM25) fused with the dense list; lexical
  response        labels -> item ids; serving_default, personalized
  rerank          DPR re-rank: rerank, retrieve_rerank
  item_embedding  the item tower; item_embedding
"""
