"""`dpsr proxy`: fans a model's requests out to its index shards and merges their top-K.

  server         the process: PredictionService for clients, health, metrics, draining
  config         the proxy config file: models -> shards -> replicas
  routing        replica choice per shard: health, hedging, outlier ejection
  shard_call     one shard's call with deadline, retries and hedges
  shard_answers  wire-level checks of a shard's answer before it is merged
  merge          shard answers -> one global top-K by score (the same rule as evaluation's)
  peer_limits    per-client concurrency caps
"""
