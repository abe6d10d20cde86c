"""DPR: the pairwise Siamese re-ranker of the DSR/DPR paper (sessions, features, model,
training, metrics, baselines, target_stats: ordered item statistics, validation: where
choices are made). docs/ranking.md."""
from dpsr_tf.ranking.metrics import session_metrics
from dpsr_tf.ranking.sessions import Pairs, SessionTable, build_pairs

__all__ = ["Pairs", "SessionTable", "build_pairs", "session_metrics"]
