"""`dpsr proxy`: fans a model's requests out to its index shards and merges their top-K.

  server         the process: the client port (or the native front end), health, metrics,
                 config reloads, draining
  servicer       the PredictionService: route, fan a call out to every shard, merge the answers
  config         the proxy config file: models -> shards -> replicas
  routing        replica choice per shard: health, hedging, outlier ejection
  shard_call     one shard's call with deadline, retries and hedges
  request_checks the servers' input limits, checked before a request is fanned out
  forwarding     the shards' request, made from the bytes the client sent
  framed_calls   Predict from the proxy's native front end as frames
  framed_shard   Predict to a replica on this host as frames
  shard_answers  wire-level checks of a shard's answer before it is merged
  merge          shard answers -> one global top-K by score (the same rule as evaluation's)
  peer_limits    per-client concurrency caps
  feedback_rounds  dense feedback answered in two rounds: every shard's first hits, then the search
"""
