"""Pretrained sentence encoders (BERT family, Hugging Face layout) as TF1-graph towers.

Modules (import them directly; this file re-exports nothing):
  files     a Hugging Face model directory read and checked: config, vocabulary, weights
  bert      the BERT encoder in TF ops, its variables filled from the directory's weights
  encoder   text [B] -> WordPiece -> BERT -> mean pooling -> L2: sentence embeddings [B, H]
  text_embedder   the encoder over Python strings, in its own graph and session
  document_cache  its embeddings of a layout's item documents, cached beside the layout
"""
