"""Offline index building: item embeddings and titles -> index shards on disk.

Modules (import them directly; importing the layout pulls in neither TensorFlow nor FAISS):
  index_layout      on-disk layout of a built index: manifest, shards, id maps, sharding rule
  index_builder     item embeddings + ids -> FAISS index shards (faiss-cpu wheel)
  lexical_manifest  the lexical index's manifest: fields, tokenizer options, shards
  lexical_index     item texts -> BM25 index shards (the C++ core through pybind11)
  catalog_index     a trained model + layout -> embeddings, FAISS and lexical shards (`dpsr index`)
  joint_pq_index    a --joint_pq model's learned IVF-PQ written as index shards (no FAISS training)
  hard_negatives    a trained model's own ranking -> per-query hard negatives (`dpsr train
                    --hard_negatives_from`, FB EBR)
"""
