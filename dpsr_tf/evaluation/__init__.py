"""Evaluation by the dashboard protocol: full-corpus Recall/nDCG/MRR, Top-k, AUC, BM25.

Modules: metrics (NumPy metrics), evaluate (model and BM25 scorers, `dpsr evaluate`'s logic).
"""
