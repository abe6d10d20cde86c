"""Evaluation by the dashboard protocol: full-corpus Recall/nDCG/MRR, Top-k, AUC, BM25.

Modules: metrics (NumPy metrics), evaluate (model and BM25 scorers, `dpsr evaluate`'s logic),
served (the served ranking through the FAISS index, `dpsr evaluate --served`),
crossval (N-fold query-hash cross-validation, `dpsr crossval`; crossval_summary: its mean,
std and pooled paired comparisons over folds),
index_compare (exact vs served through several indexes of one model, precision@100),
senses (do the query heads split the synthetic catalog's polysemous queries; bench/sense_bench.py).
"""
