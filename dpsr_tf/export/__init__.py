"""Offline indexing, FAISS ops and SavedModel export (a top-level package of DPSR-TF).

Modules (import them directly; this file re-exports nothing, so importing the index layout does
not pull in TensorFlow or FAISS):
  index_layout   on-disk layout of a built index: manifest, shards, id maps, sharding rule
  index_builder  item embeddings + ids -> FAISS index shards (faiss-cpu wheel)
  joint_pq_index a --joint_pq model's learned IVF-PQ written as index shards (no FAISS training)
  faiss_ops      TF resource + Dpsr>FaissSearch op over an index file (op library)
  head_merge     in-graph merge of the per-head search results
  graph_lookup   searchgcn servables: query text -> its click-graph lists (asset hash table)
  cc/            C++ cores (faiss_index.h, lexical_index.h; asset_snapshot.h: the private
                 copies of index files they map), op definitions (ops/) and kernels (kernels/)
"""
