"""Training jobs: TF_CONFIG, RunConfig, train_and_evaluate, the loopback cluster launcher.

Modules (one job each):
  config       TrainConfig
  tf_config    TF_CONFIG parsing/writing, loopback clusters, free ports
  run_config   tf.estimator.RunConfig per task (session config, ps placement)
  driver       train_and_evaluate for every task of a cluster (or one process)
  launcher     LocalCluster: real multi-process clusters on loopback
  traffic      bytes crossing between tasks per step (the §5.1.3 measurement)
"""
