"""Classify, Regress and MultiInference over tf.Example inputs (TF Serving's Input protos).

They run on signatures with one string input that takes serialized examples (TF Serving's
classifier.cc / regressor.cc); the method name (tensorflow/serving/classify or /regress) is
checked only with --enable_signature_method_name_check, off by default as in TF Serving. A DPSR
retrieval servable's signatures take a raw query (and k): for them these calls return
INVALID_ARGUMENT and say to use Predict.
"""
from typing import Optional

import grpc
import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server.lifecycle.signatures import (CLASSIFY_METHOD, REGRESS_METHOD,
                                                             Signature)

CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"


def serialized_examples(input_proto, max_rows: int) -> np.ndarray:
    """Serialized tf.Examples of an Input proto ([N] object array of bytes).

    example_list_with_context: each example gets the context's features it does not have.
    More than `max_rows` examples (0: no limit) are refused before any is serialized.
    """
    kind = input_proto.WhichOneof("kind")
    if kind in ("example_list", "example_list_with_context"):
        count = len(getattr(input_proto, kind).examples)
        if max_rows and count > max_rows:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Input has {count} examples; the limit is {max_rows} "
                               "(--max_request_rows); split it into smaller requests")
    if kind == "example_list":
        examples = list(input_proto.example_list.examples)
        out = [e.SerializeToString() for e in examples]
    elif kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context
        out = []
        for example in input_proto.example_list_with_context.examples:
            merged = example_pb2.Example()
            merged.CopyFrom(example)
            for key, feature in context.features.feature.items():
                if key not in merged.features.feature:
                    merged.features.feature[key].CopyFrom(feature)
            out.append(merged.SerializeToString())
    else:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Input is empty; send "
                           "input.example_list or input.example_list_with_context")
    if not out:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Input contains no examples")
    array = np.empty(len(out), dtype=object)
    array[:] = out
    return array


_NOUN = {"Classify": "classification", "Regress": "regression"}


def _require_method(signature: Signature, method: str, api: str,
                    method_name_check: bool) -> str:
    """Checks the signature can take serialized tf.Examples; returns its input alias.

    As TF Serving's classifier.cc / regressor.cc: the method name is checked only with
    --enable_signature_method_name_check (TF2 SavedModels say `predict` on every signature);
    the signature must have exactly one DT_STRING input, whatever its name.
    """
    if method_name_check and signature.method_name != method:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Expected {_NOUN[api]} signature method_name to be {method}. Was: "
            f"{signature.method_name} (signature '{signature.name}'; "
            "--enable_signature_method_name_check is on)")
    if len(signature.inputs) != 1:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Expected one input Tensor. {api} needs a signature with a single "
                           f"serialized tf.Example input; '{signature.name}' has "
                           f"{sorted(signature.inputs)}. Use Predict for this signature.")
    alias, spec = next(iter(signature.inputs.items()))
    if spec.dtype != types_pb2.DT_STRING:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{api} signature '{signature.name}' input '{alias}' is not a "
                           "string tensor of serialized tf.Examples. Use Predict.")
    return alias


def _classify_signature(signature: Signature, method_name_check: bool):
    """(input alias, outputs to fetch) of a signature Classify can run; else INVALID_ARGUMENT."""
    alias = _require_method(signature, CLASSIFY_METHOD, "Classify", method_name_check)
    fetches = [a for a in (CLASSIFY_CLASSES, CLASSIFY_SCORES) if a in signature.outputs]
    if not fetches:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"classify signature '{signature.name}' has neither 'classes' nor "
                           "'scores' outputs")
    return alias, fetches


def _regress_signature(signature: Signature, method_name_check: bool) -> str:
    """The input alias of a signature Regress can run; else INVALID_ARGUMENT."""
    alias = _require_method(signature, REGRESS_METHOD, "Regress", method_name_check)
    if REGRESS_OUTPUTS not in signature.outputs:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"regress signature '{signature.name}' has no 'outputs' output")
    return alias


def check_before_decoding(servable, api: str, signature_name: Optional[str],
                          method_name_check: bool = False) -> None:
    """Refuses a Classify or Regress request that no signature could run, before its examples
    are decoded (a 16 MB body of 2M examples costs seconds and ~200 MiB to decode).

    Args:
      servable: the version that will answer.
      api: "classify" or "regress".
      signature_name: the request's signature ("" for serving_default), or None when it is
        not known yet (the body names one): then only a servable without any signature this
        API can run is refused; the named one is checked after decoding, as always.

    Raises:
      ServingError(INVALID_ARGUMENT): the same message as after decoding when the signature is
        known; otherwise one naming the servable's signatures and Predict.
    """
    check = _classify_signature if api == "classify" else _regress_signature
    if signature_name is not None:
        check(servable.signature(signature_name, api), method_name_check)
        return
    for signature in servable.signatures.values():
        try:
            check(signature, method_name_check)
            return
        except ServingError:
            continue
    noun = "Classify" if api == "classify" else "Regress"
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"{servable.name} version {servable.version} has no signature that "
                       f"{noun} can run (one serialized tf.Example string input and "
                       f"{'classes or scores' if api == 'classify' else 'outputs'}); its "
                       f"signatures: {', '.join(sorted(servable.signatures)) or 'none'}. "
                       "Use Predict.")


def run_classify(servable, signature: Signature, examples: np.ndarray, timeout_s,
                 method_name_check: bool = False):
    """ClassificationResult for serialized examples on a classify signature."""
    alias, fetches = _classify_signature(signature, method_name_check)
    out = servable.run(signature, {alias: examples}, fetches, timeout_s)
    classes = out.get(CLASSIFY_CLASSES)
    scores = out.get(CLASSIFY_SCORES)
    n = examples.shape[0]
    for name, value in ((CLASSIFY_CLASSES, classes), (CLASSIFY_SCORES, scores)):
        if value is not None and (value.ndim != 2 or value.shape[0] != n):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Expected {name} output shape [{n}, num_classes], got "
                               f"{list(value.shape)}")
    result = classification_pb2.ClassificationResult()
    width = (classes if classes is not None else scores).shape[1]
    for i in range(n):
        row = result.classifications.add()
        for j in range(width):
            item = row.classes.add()
            if classes is not None:
                item.label = classes[i, j].decode("utf-8", "replace")
            if scores is not None:
                item.score = float(scores[i, j])
    return result


def run_regress(servable, signature: Signature, examples: np.ndarray, timeout_s,
                method_name_check: bool = False):
    """RegressionResult for serialized examples on a regress signature."""
    alias = _regress_signature(signature, method_name_check)
    values = servable.run(signature, {alias: examples}, [REGRESS_OUTPUTS],
                          timeout_s)[REGRESS_OUTPUTS]
    n = examples.shape[0]
    if values.shape not in ((n,), (n, 1)):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Expected output shape [{n}] or [{n}, 1], got {list(values.shape)}")
    result = regression_pb2.RegressionResult()
    for v in values.reshape(n):
        result.regressions.add().value = float(v)
    return result


def multi_inference_tasks(request):
    """Checks a MultiInferenceRequest: tasks on one model/version, distinct signatures."""
    tasks = list(request.tasks)
    if not tasks:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "MultiInferenceRequest has no tasks")
    names = {t.model_spec.name for t in tasks}
    if len(names) != 1:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"All tasks must use the same model name; got {sorted(names)}")
    versions = {(t.model_spec.WhichOneof("version_choice"),
                 t.model_spec.version.value, t.model_spec.version_label) for t in tasks}
    if len(versions) != 1:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           "All tasks must use the same model version or label")
    sigs = [t.model_spec.signature_name for t in tasks]
    if len(set(sigs)) != len(sigs):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Duplicate evaluation of signature: {sigs}")
    for t in tasks:
        if t.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"Unsupported signature method_name: {t.method_name}")
    return tasks


def new_multi_inference_response():
    return inference_pb2.MultiInferenceResponse()
