"""Signature: what a SignatureDef accepts and returns, precomputed once per loaded version."""
import dataclasses
import functools
from typing import Dict, Optional, Tuple

import grpc
import numpy as np

from dpsr_tf.serving import tensors
from dpsr_tf.serving.errors import ServingError

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"
INIT_OP_SIGNATURE = "__saved_model_init_op"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a signature.

    Attributes:
      alias: the key clients use (inputs["query"]).
      tensor_name: the graph tensor ("serving_default_query:0").
      dtype: TF DataType enum.
      shape: tuple with -1 for unknown dims; None for unknown rank.
      default: numpy value used when the request leaves this input out (SignatureDef.defaults),
        or None when the input is required.
      fed_placeholder: the tensor is a placeholder's output, so a request's value replaces it
        and must have the declared shape (TensorFlow's feed contract; a value of another rank
        would fail deep in the graph). Other tensors (e.g. an Identity of parsed examples) take
        what the graph can compute, as in TF Serving.
    """

    alias: str
    tensor_name: str
    dtype: int
    shape: Optional[Tuple[int, ...]]
    default: Optional[np.ndarray] = None
    fed_placeholder: bool = False

    @functools.cached_property  # read several times per request
    def batch_major(self) -> bool:
        """True when dim 0 is the (unknown) batch dimension."""
        return bool(self.shape) and self.shape[0] == -1

    def describe(self) -> str:
        shape = "?" if self.shape is None else "[" + ",".join(
            "?" if d < 0 else str(d) for d in self.shape) + "]"
        return f"{tensors.dtype_name(self.dtype)} {shape}"

    def accepts_shape(self, shape: Tuple[int, ...]) -> bool:
        """Whether a value of `shape` may be fed: any shape unless fed_placeholder, else the
        declared rank with every known dimension equal."""
        if not self.fed_placeholder or self.shape is None:
            return True
        return len(shape) == len(self.shape) and all(
            want < 0 or got == want for got, want in zip(shape, self.shape))


@dataclasses.dataclass(frozen=True)
class Signature:
    """A SignatureDef in a form the request path can use without protobuf lookups."""

    name: str
    method_name: str
    inputs: Dict[str, TensorSpec]
    outputs: Dict[str, TensorSpec]
    proto: object  # the SignatureDef, for GetModelMetadata

    @functools.cached_property
    def batchable(self) -> bool:
        """Whether requests can be concatenated along dim 0: every output is batch-major."""
        return bool(self.outputs) and all(o.batch_major for o in self.outputs.values())

    @classmethod
    def from_proto(cls, name: str, signature_def, placeholders=frozenset()) -> "Signature":
        """`placeholders`: names of the graph's Placeholder and PlaceholderWithDefault nodes."""
        defaults = {alias: tensors.to_ndarray(t, f"default of input '{alias}'")
                    for alias, t in signature_def.defaults.items()}
        inputs = {alias: TensorSpec(alias, info.name, info.dtype, tensors.shape_of(info),
                                    defaults.get(alias),
                                    info.name.rsplit(":", 1)[0] in placeholders)
                  for alias, info in signature_def.inputs.items()}
        outputs = {alias: TensorSpec(alias, info.name, info.dtype, tensors.shape_of(info))
                   for alias, info in signature_def.outputs.items()}
        return cls(name, signature_def.method_name, inputs, outputs, signature_def)


def signatures_of(meta_graph_def) -> Dict[str, Signature]:
    """All serving signatures of a MetaGraphDef (the TF2 init-op pseudo-signature is skipped)."""
    placeholders = frozenset(node.name for node in meta_graph_def.graph_def.node
                             if node.op in ("Placeholder", "PlaceholderWithDefault"))
    return {name: Signature.from_proto(name, sig, placeholders)
            for name, sig in meta_graph_def.signature_def.items() if name != INIT_OP_SIGNATURE}


# TF Serving's answer for a signature name a servable does not have, per API: (code, message).
_UNKNOWN_SIGNATURE = {
    # predict_util.cc RunPredict (gRPC Predict).
    "predict": (grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "{}" not found.'),
    # http_rest_api_handler.cc GetInfoMap (REST :predict looks the signature up first).
    "rest_predict": (grpc.StatusCode.INVALID_ARGUMENT,
                     'Serving signature name: "{}" not found in signature def'),
    # classifier.cc / regressor.cc Get{Classification,Regression}Signature (gRPC and REST).
    "classify": (grpc.StatusCode.INVALID_ARGUMENT, "No signature was found with the name: {}"),
    "regress": (grpc.StatusCode.INVALID_ARGUMENT, "No signature was found with the name: {}"),
    # multi_inference.cc TensorFlowMultiInferenceRunner::Infer.
    "multi_inference": (grpc.StatusCode.INVALID_ARGUMENT,
                        "Requested signature not found in model graph: {}"),
}
SIGNATURE_APIS = tuple(_UNKNOWN_SIGNATURE)


def find_signature(signatures: Dict[str, Signature], name: str, model: str,
                   version: int, api: str = "predict") -> Signature:
    """The named signature of a servable ("" means serving_default).

    Args:
      api: the API asking, one of SIGNATURE_APIS; it chooses TF Serving's answer when the
        signature is absent.

    Raises:
      ServingError: TF Serving's code and message for `api` (gRPC Predict: FAILED_PRECONDITION;
        REST :predict, Classify, Regress, MultiInference: INVALID_ARGUMENT), followed by the
        signatures the servable has.
    """
    key = name or DEFAULT_SIGNATURE
    sig = signatures.get(key)
    if sig is None:
        code, message = _UNKNOWN_SIGNATURE[api]
        raise ServingError(code, f"{message.format(key)} (signatures of {model} version "
                                 f"{version}: {', '.join(sorted(signatures)) or 'none'})")
    return sig
