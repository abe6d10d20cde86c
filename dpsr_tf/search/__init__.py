"""In-graph search: the ops a servable runs after the query tower.

Modules (import them directly; this file re-exports nothing):
  index_resource  the TF resource that holds one loaded index file (shared by both ops)
  faiss_ops       Dpsr>FaissSearch over a FAISS index file (the op library)
  lexical_ops     Dpsr>LexicalSearch, BM25 over a lexical index file (the op library)
  head_merge      merge of the per-head search results (in-graph, and its numpy twin)
  fusion          dense + lexical list fusion rules (in-graph, and their numpy twins)
  dense_feedback  query heads moved toward their first hits before the dense search
The C++ cores, op definitions and kernels are in search_cc/ at the repository root.
"""
