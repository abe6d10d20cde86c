"""Model versions: from directories on disk to loaded servables, swapped without failing a request.

  manager           versions on disk -> loaded servables (policies, labels, reloads, unloads)
  version_dirs      which directory names are versions; when a version's files changed
  servable          one SavedModel version (session, one callable per signature)
  tflite_servable   one TFLite version (interpreter pool)
  servable_factory  which of the two a version directory becomes
  signatures        signature facts and lookup (TF Serving's message for a missing one)
  warmup            reading assets.extra/tf_serving_warmup_requests
"""
