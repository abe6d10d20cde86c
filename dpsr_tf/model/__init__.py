"""The DPSR model: config, embedding bags, towers, soft dot product, losses, Estimator model_fn.

Modules (one job each):
  config      ModelConfig
  embedding   partitioned tables, the embedding bag and its aggregation on parameter servers
  towers      query_tower [B, m, d] and item_tower [B, d] (fixed variable names under "dpsr/")
  searchgcn   --tower=searchgcn: attention over click-graph neighbours added to both towers
  scoring     the soft dot product over heads (§4.3)
  losses      hinge with mixed / human negatives, sampled softmax with logQ correction
  model_fn    the tf.estimator model_fn
  model_dir   the resolved config of a model directory (load_model_config)
  embedder    towers restored from a checkpoint in a fresh graph, over NumPy inputs
  progress    the training progress log line (a hook of model_fn) and quiet TF logging
  joint_pq    the IVF-PQ index as a layer (--joint_pq): rotation, centroids, codebooks, NumPy twin
  distill     --teacher_dir: the score-distillation term and the teacher's tables in the graph
  distill_cache  the teacher's embeddings of the catalog and training queries, cached by layout
"""
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.model_dir import load_model_config
from dpsr_tf.model.model_fn import dpsr_model_fn
from dpsr_tf.model.scoring import paired_soft_dot_product, soft_dot_product
from dpsr_tf.model.towers import item_tower, query_tower

__all__ = ["ModelConfig", "dpsr_model_fn", "item_tower", "load_model_config",
           "paired_soft_dot_product", "query_tower", "soft_dot_product"]
