"""Synonym recall: a cycle-consistent query rewriter (train, decode, rewrite tables)."""
from dpsr_tf.rewriting.config import RewriterConfig
from dpsr_tf.rewriting.table import normalize_query, read_table, write_table

__all__ = ["RewriterConfig", "normalize_query", "read_table", "write_table"]
