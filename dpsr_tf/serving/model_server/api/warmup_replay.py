"""Warm-up records replayed through the live request path before a version takes traffic.

The records come from the version's assets.extra/tf_serving_warmup_requests
(lifecycle/warmup.py reads them); Predict, Classify and Regress records run as requests do
(predict.py, inference.py), each `iterations` times. A failing record fails the load, as in TF
Serving.
"""
import logging

import grpc

from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server.api import inference
from dpsr_tf.serving.model_server.api.predict import RequestLimits, prepare_predict
from dpsr_tf.serving.model_server.lifecycle import warmup

_LOG = logging.getLogger("serving.core")


def warm_up(servable, limits: RequestLimits, iterations: int = 1,
            method_name_check: bool = False) -> None:
    """Replays the warm-up records of a loaded servable (none: nothing happens).

    Args:
      servable: a loaded SavedModelServable or TfLiteServable.
      limits: the request limits live requests are checked against.
      iterations: replays per record (--num_request_iterations_for_warmup; at least one).
      method_name_check: --enable_signature_method_name_check.

    Raises:
      ServingError: the failing record's code, with a message naming the record and the file.
    """
    records = warmup.read_warmup_records(servable.path)
    for i, log in enumerate(records):
        kind = log.WhichOneof("log_type")
        for _ in range(max(1, iterations)):
            try:
                if kind == "predict_log":
                    request = log.predict_log.request
                    sig = servable.signature(request.model_spec.signature_name)
                    prepared = prepare_predict(sig, request, limits, method_name_check)
                    servable.run(sig, prepared.feeds, prepared.fetches)
                elif kind in ("classify_log", "regress_log"):
                    req = getattr(log, kind).request
                    sig = servable.signature(req.model_spec.signature_name, kind.split("_")[0])
                    examples = inference.serialized_examples(req.input, limits.max_rows)
                    run = (inference.run_classify if kind == "classify_log"
                           else inference.run_regress)
                    run(servable, sig, examples, None, method_name_check)
                else:
                    raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                       f"unsupported warm-up log type {kind}")
            except ServingError as e:
                raise ServingError(e.code, f"warm-up record {i} of "
                                   f"{warmup.warmup_path(servable.path)} failed: "
                                   f"{e.message}") from e
    if records:
        _LOG.info("Finished reading warmup data for model at %s. Number of warmup records "
                  "read: %d.", servable.path, len(records))
