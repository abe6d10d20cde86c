"""One loaded TensorFlow Lite model version (`model.tflite`), served like a SavedModel version.

TF Serving loads a version directory's `model.tflite` instead of its SavedModel when
`--prefer_tflite_model` is set and the file exists (saved_model_bundle_factory.cc). Here the
model runs on TensorFlow's in-process `tf.lite.Interpreter`; its signature runners become
SignatureDefs (method `tensorflow/serving/predict`), so Predict, GetModelMetadata and the REST
API treat it like a SavedModel version. A model converted without signatures gets TF Serving's
generated serving_default: every input and output, keyed by tensor name.

Concurrency: an interpreter holds its tensors' buffers, so one interpreter runs one call at a
time. Each call borrows an interpreter from a per-version pool that grows on demand up to
`max_interpreters` (TF Serving's --num_tflite_pools); a call that finds all of them busy waits
for one, within its deadline.
"""
import logging
import os
import threading
import time
from typing import Dict, List, Optional, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server.lifecycle.signatures import (DEFAULT_SIGNATURE, PREDICT_METHOD,
                                                             Signature, find_signature)

_LOG = logging.getLogger("serving.tflite")

TFLITE_MODEL_FILENAME = "model.tflite"
_SAVED_MODEL_FILENAMES = ("saved_model.pb", "saved_model.pbtxt")


def has_tflite_model(path: str) -> bool:
    """Whether a version directory holds a `model.tflite`."""
    return os.path.isfile(os.path.join(path, TFLITE_MODEL_FILENAME))


def serves_tflite(path: str, prefer_tflite_model: bool) -> bool:
    """Which model of a version directory is served.

    TF Serving's rule: `model.tflite` when --prefer_tflite_model is set and the file exists,
    else the SavedModel. A directory that holds a `model.tflite` and no SavedModel is served
    from the TFLite file even without the flag (TF Serving fails to load such a version).
    """
    if not has_tflite_model(path):
        return False
    if prefer_tflite_model:
        return True
    return not any(os.path.exists(os.path.join(path, f)) for f in _SAVED_MODEL_FILENAMES)


def _signature_def(runner):
    """A predict SignatureDef for one signature runner: aliases are the signature's input and
    output names, tensor names the TFLite tensors', -1 for dynamic dimensions."""
    sig = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    for details, field in ((runner.get_input_details(), sig.inputs),
                           (runner.get_output_details(), sig.outputs)):
        for alias, d in details.items():
            info = field[alias]
            info.name = d["name"]
            info.dtype = tf.as_dtype(d["dtype"]).as_datatype_enum
            for size in d["shape_signature"]:
                info.tensor_shape.dim.add(size=int(size))
    return sig


def _tensor_alias(name: str) -> str:
    """TF Serving's alias of a tensor in a generated signature: its name without ':<index>'."""
    return name.split(":", 1)[0]


class _DefaultRunner:
    """The generated serving_default of a model without signatures (TF Serving's
    tflite_session.cc does the same): every model input and output, keyed by tensor name
    (tensor_alias), run on the interpreter's own input and output tensors."""

    def __init__(self, interpreter: tf.lite.Interpreter):
        self._interpreter = interpreter
        self._inputs = self._by_alias(interpreter.get_input_details(), "input")
        self._outputs = self._by_alias(interpreter.get_output_details(), "output")
        self._shapes: Dict[str, tuple] = {}  # input shapes allocated for (none yet)

    @staticmethod
    def _by_alias(details, what):
        out = {}
        for d in details:
            alias = _tensor_alias(d["name"])
            if not alias or alias in out:
                raise ValueError(f"{what} tensor name {d['name']!r} is empty or not unique; "
                                 "convert the model with a named signature")
            out[alias] = d
        return out

    def get_input_details(self):
        return self._inputs

    def get_output_details(self):
        return self._outputs

    def __call__(self, **args) -> Dict[str, np.ndarray]:
        resize = {alias: value.shape for alias, value in args.items()
                  if self._shapes.get(alias) != value.shape}
        for alias, shape in resize.items():
            self._interpreter.resize_tensor_input(self._inputs[alias]["index"], shape)
        if resize or not self._shapes:
            self._interpreter.allocate_tensors()
            self._shapes.update(resize)
        for alias, value in args.items():
            self._interpreter.set_tensor(self._inputs[alias]["index"], value)
        self._interpreter.invoke()
        # get_tensor copies: the outputs outlive the interpreter's next call.
        return {alias: self._interpreter.get_tensor(d["index"])
                for alias, d in self._outputs.items()}


class _Interpreter:
    """A tf.lite.Interpreter with its signature runners, used by one call at a time."""

    def __init__(self, model: bytes, num_threads: Optional[int]):
        self.interpreter = tf.lite.Interpreter(model_content=model, num_threads=num_threads)
        self.runners = {key: self.interpreter.get_signature_runner(key)
                        for key in self.interpreter.get_signature_list()}
        if not self.runners:
            self.runners = {DEFAULT_SIGNATURE: _DefaultRunner(self.interpreter)}


class TfLiteServable:
    """A loaded `model.tflite` version with the SavedModelServable interface.

    Thread-safe: `run` may be called from many threads (each borrows its own interpreter).
    """

    def __init__(self, name: str, version: int, path: str, max_interpreters: int = 1,
                 num_threads: Optional[int] = None):
        self.name = name
        self.version = version
        self.path = path
        self.signatures: Dict[str, Signature] = {}
        self.meta_graph_def = None
        self.load_seconds = 0.0
        # A .tflite file carries no `dpsr export` marker: one run per request (chunked_runs.py).
        self.rows_independent = False
        self._max_interpreters = max(1, int(max_interpreters))
        self._num_threads = num_threads
        self._model: Optional[bytes] = None
        self._free: List[_Interpreter] = []
        self._created = 0
        self._available = threading.Condition()
        self._closed = False

    def load(self) -> None:
        """Reads model.tflite and builds the signatures from one interpreter.

        A model without signatures gets serving_default over all its inputs and outputs, keyed
        by tensor name, as in TF Serving.

        Raises:
          ServingError: NOT_FOUND when there is no model.tflite, INVALID_ARGUMENT when it is not
            a TFLite model (or, without signatures, its tensor names are not unique).
        """
        start = time.monotonic()
        file_path = os.path.join(self.path, TFLITE_MODEL_FILENAME)
        try:
            with open(file_path, "rb") as f:
                self._model = f.read()
        except FileNotFoundError as e:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"no {TFLITE_MODEL_FILENAME} in {self.path}") from e
        try:
            first = _Interpreter(self._model, self._num_threads)
        except Exception as e:  # the TFLite loader raises ValueError/RuntimeError for bad files
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"failed to load TFLite model {file_path}: "
                               f"{type(e).__name__}: {e}") from e
        self.signatures = {key: Signature.from_proto(key, _signature_def(runner))
                           for key, runner in first.runners.items()}
        self._free.append(first)
        self._created = 1
        self.load_seconds = time.monotonic() - start
        _LOG.info("Loaded TFLite model %s version %d from %s: signatures %s, up to %d "
                  "interpreters", self.name, self.version, file_path,
                  ", ".join(sorted(self.signatures)), self._max_interpreters)

    def signature(self, name: str, api: str = "predict") -> Signature:
        """The named signature ("" means serving_default); when absent, TF Serving's error
        for `api` (signatures.find_signature)."""
        return find_signature(self.signatures, name, self.name, self.version, api)

    def _borrow(self, timeout_s: Optional[float]) -> _Interpreter:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._available:
            while True:
                if self._closed:
                    raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                       f"{self.name} version {self.version} is unloaded")
                if self._free:
                    return self._free.pop()
                if self._created < self._max_interpreters:
                    self._created += 1
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                       "deadline exceeded waiting for a free TFLite interpreter")
                self._available.wait(left)
        try:
            return _Interpreter(self._model, self._num_threads)
        except Exception:
            with self._available:
                self._created -= 1
                self._available.notify()
            raise

    def _give_back(self, interpreter: _Interpreter) -> None:
        with self._available:
            if not self._closed:
                self._free.append(interpreter)
            self._available.notify()

    def run(self, signature: Signature, feeds: Dict[str, np.ndarray],
            fetches: Sequence[str], timeout_s: Optional[float] = None,
            batched: bool = False) -> Dict[str, np.ndarray]:  # pylint: disable=unused-argument
        """Runs the signature once on a borrowed interpreter.

        Args:
          signature: one of self.signatures.
          feeds: alias -> value for every input.
          fetches: output aliases to return.
          timeout_s: seconds left of the request's deadline (None: none); bounds the wait for a
            free interpreter (a started invocation is not interrupted).

        Returns:
          alias -> np.ndarray.

        Raises:
          ServingError: INVALID_ARGUMENT for an input whose shape the signature does not accept
            or a failed invocation; DEADLINE_EXCEEDED when no interpreter came free in time.
        """
        if timeout_s is not None and timeout_s <= 0:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "deadline exceeded before the TFLite invocation")
        args = {}
        for alias, spec in signature.inputs.items():
            if alias not in feeds:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input '{alias}' of signature '{signature.name}' has no value")
            value = feeds[alias]
            _check_shape(alias, spec.shape, value.shape)
            args[alias] = value
        interpreter = self._borrow(timeout_s)
        try:
            outputs = interpreter.runners[signature.name](**args)
        except ValueError as e:  # a value the interpreter cannot take (dtype, size)
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"TFLite signature '{signature.name}': {e}") from e
        except RuntimeError as e:  # a failed invocation, e.g. an op's own check
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"TFLite signature '{signature.name}' failed: {e}") from e
        finally:
            self._give_back(interpreter)
        # The runner copies outputs out of the interpreter's buffers, so they outlive the loan.
        return {alias: outputs[alias] for alias in fetches}

    def close(self) -> None:
        """Drops the interpreters; calls in flight finish on the ones they hold."""
        with self._available:
            self._closed = True
            self._free = []
            self._model = None
            self._available.notify_all()


def _check_shape(alias: str, expected, got) -> None:
    """TFLite resizes any input to the shape it is given; the signature's fixed dimensions are
    enforced here, so a wrong width is a clear INVALID_ARGUMENT, not a silently resized model."""
    if expected is None:
        return
    want = "[" + ",".join("?" if d < 0 else str(d) for d in expected) + "]"
    if len(got) != len(expected) or any(e >= 0 and e != g for e, g in zip(expected, got)):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input '{alias}' has shape {list(got)} but the TFLite signature "
                           f"takes {want}; send a tensor of that shape")
