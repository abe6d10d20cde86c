"""One loaded SavedModel version: a TF session over its graph, run through cached callables.

Loading mirrors TF Serving's SavedModelBundle: the MetaGraphDef tagged `serve` is imported into
its own graph and session (tf.compat.v1 loader: variables restored, assets and init ops run),
and requests run with Session::Run on the signature's tensors. The project's op library is
loaded first, so graphs that use Dpsr> ops (the tokenizer, FAISS search) import.
"""
import dataclasses
import logging
import os
import threading
import time
from typing import Dict, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.saved_model import loader_impl

from dpsr_tf import op_library
from dpsr_tf.serving import errors
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.export import servable_info
from dpsr_tf.serving.model_server.lifecycle.signatures import (Signature, find_signature,
                                                             signatures_of)

_LOG = logging.getLogger("serving.servable")



@dataclasses.dataclass(frozen=True)
class SessionOptions:
    """How sessions are created (tensorflow_model_server's session flags).

    Attributes:
      saved_model_tags: tags of the MetaGraphDef to load.
      intra_op_parallelism: threads inside one op (0: TF's choice).
      inter_op_parallelism: ops run in parallel (0: TF's choice).
      load_op_library: load dpsr_tf's op library before importing graphs.
      session_config: a serialized tf ConfigProto (--tensorflow_session_config_file) that the
        parallelism settings above override when they are not 0; None: TF's defaults.
      prefer_tflite_model: load a version's model.tflite instead of its SavedModel when both
        are there (servable_factory.py has the rule).
      num_tflite_interpreters: most TFLite interpreters per version, i.e. concurrent calls
        (--num_tflite_pools; 0: one per CPU).
      session_runners: threads that may run sessions at once (run and batch threads); when
        inter-op parallelism is TF's choice, the pool gets at least this many (inter_op_threads).
      run_in_caller_thread: an unbatched run's ops execute on the run thread that called it
        (RunOptions.inter_op_thread_pool = -1) instead of being handed to the inter-op pool op
        by op: no thread hop per op, and a run holds exactly one thread. Batches keep the
        pool: the batch threads are few, and a large batch's ops gain from running side by
        side. TF falls back to the pool for a graph placed on several devices.
      thread_spinning: TF's pool threads spin before they sleep when idle (TF's default);
        off, they sleep at once (ConfigProto.experimental.disable_thread_spinning), which
        leaves the CPU to the requests on a server with more threads than cores.
    """

    saved_model_tags: Tuple[str, ...] = ("serve",)
    intra_op_parallelism: int = 0
    inter_op_parallelism: int = 0
    load_op_library: bool = True
    session_config: Optional[bytes] = None
    prefer_tflite_model: bool = False
    num_tflite_interpreters: int = 0
    session_runners: int = 0
    run_in_caller_thread: bool = True
    thread_spinning: bool = False


def inter_op_threads(requested: int, session_config: int, session_runners: int,
                     cpus: int) -> int:
    """The inter-op pool size a session is created with (0: TF's choice).

    `requested` (--tensorflow_inter_op_parallelism), else the session config file's value, else
    TF's choice (one per core) raised to `session_runners`. Why: an op that blocks for its whole
    run (the FAISS search) holds an inter-op thread, and all sessions share one pool; with fewer
    threads than concurrent runs, a light request's ops queue behind heavy runs' blocking ops
    in that pool, behind the run queue's fairness (docs/benchmarks.md, "A bound on one client's
    run threads"). Where cores >= runners (most servers) this changes nothing.
    """
    if requested or session_config:
        return requested or session_config
    return session_runners if session_runners > cpus else 0


def load_op_library_once() -> None:
    """Loads the DPSR op library; a clear error when it is not built."""
    try:
        op_library.load()
    except ImportError as e:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from e


class SavedModelServable:
    """A loaded version of a model.

    Thread-safe: `run` may be called from many threads; `close` waits for none (the version
    manager drains references first).
    """

    def __init__(self, name: str, version: int, path: str, options: SessionOptions):
        self.name = name
        self.version = version
        self.path = path
        self._options = options
        self._session = None
        self._callables = {}
        self._lock = threading.Lock()
        self.signatures: Dict[str, Signature] = {}
        self.meta_graph_def = None
        self.load_seconds = 0.0
        # Written by `dpsr export`: each row is encoded and searched alone, so a request's
        # rows may run in chunks (chunked_runs.py, --max_rows_per_run's default).
        self.rows_independent = os.path.isfile(
            servable_info.servable_info_path(path))

    def load(self) -> None:
        """Imports the graph, restores variables, runs init ops.

        Raises:
          ServingError: NOT_FOUND when no SavedModel is there, DATA_LOSS/INVALID_ARGUMENT for a
            corrupt one, or the TF error's code.
        """
        start = time.monotonic()
        if self._options.load_op_library:
            load_op_library_once()
        if not any(os.path.exists(os.path.join(self.path, f))
                   for f in ("saved_model.pb", "saved_model.pbtxt")):
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"no saved_model.pb in {self.path}; export a SavedModel there")
        config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
        if self._options.session_config is not None:
            config.MergeFromString(self._options.session_config)
        if self._options.intra_op_parallelism:
            config.intra_op_parallelism_threads = self._options.intra_op_parallelism
        config.inter_op_parallelism_threads = inter_op_threads(
            self._options.inter_op_parallelism, config.inter_op_parallelism_threads,
            self._options.session_runners, os.cpu_count() or 1)
        if not self._options.thread_spinning:
            config.experimental.disable_thread_spinning = True
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph, config=config)
        try:
            with graph.as_default():
                meta_graph_def = loader_impl.SavedModelLoader(self.path).load(
                    session, list(self._options.saved_model_tags))
        except tf.errors.OpError as e:
            session.close()
            raise errors.from_tf_error(e) from e
        except Exception as e:  # corrupt protos, missing tags, unknown ops: all load failures
            session.close()
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"failed to load SavedModel {self.path}: "
                               f"{type(e).__name__}: {e}") from e
        self._session = session
        self.meta_graph_def = meta_graph_def
        self.signatures = signatures_of(meta_graph_def)
        try:
            for signature in self.signatures.values():
                self._callable(signature)
                if self._options.run_in_caller_thread:
                    self._callable(signature, in_caller=True)
        except Exception as e:  # a signature whose tensors do not exist in the graph
            self.close()
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"SavedModel {self.path}: cannot prepare its signatures: {e}") from e
        graph.finalize()
        self.load_seconds = time.monotonic() - start

    def signature(self, name: str, api: str = "predict") -> Signature:
        """The named signature ("" means serving_default); when absent, TF Serving's error
        for `api` (signatures.find_signature)."""
        return find_signature(self.signatures, name, self.name, self.version, api)

    def _callable(self, signature: Signature, in_caller: bool = False):
        """One compiled session callable per signature (every input fed, every output
        fetched) and way of running it, built at load: a call is TF_SessionRunCallable, with
        no per-call feed-dict or fetch processing and no graph pruning or optimization on the
        first request. in_caller: the ops run on the calling thread."""
        key = (signature.name, in_caller)
        fn = self._callables.get(key)
        if fn is None:
            with self._lock:
                fn = self._callables.get(key)
                if fn is None:
                    options = config_pb2.CallableOptions()
                    options.feed.extend(i.tensor_name for i in signature.inputs.values())
                    options.fetch.extend(o.tensor_name for o in signature.outputs.values())
                    if in_caller:
                        options.run_options.inter_op_thread_pool = -1
                    fn = self._session._make_callable_from_options(options)  # pylint: disable=protected-access
                    self._callables[key] = fn
        return fn

    def run(self, signature: Signature, feeds: Dict[str, np.ndarray],
            fetches: Sequence[str], timeout_s: Optional[float] = None,
            batched: bool = False) -> Dict[str, np.ndarray]:
        """Runs the signature once.

        Args:
          signature: one of self.signatures.
          feeds: alias -> value for every input.
          fetches: output aliases to return.
          timeout_s: seconds left of the request's deadline (None: none); the run does not
            start when none is left (a started run of one batch is not interrupted).
          batched: a batch of requests (its ops use the inter-op pool; SessionOptions).

        Returns:
          alias -> np.ndarray.

        Raises:
          ServingError with the TF error's code (an assertion in the graph -> INVALID_ARGUMENT).
        """
        if self._session is None:
            raise ServingError(grpc.StatusCode.UNAVAILABLE,
                               f"{self.name} version {self.version} is unloaded")
        fn = self._callable(signature, self._options.run_in_caller_thread and not batched)
        try:
            args = [feeds[alias] for alias in signature.inputs]
        except KeyError as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {e} of signature '{signature.name}' has no value") from e
        if timeout_s is not None and timeout_s <= 0:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "deadline exceeded before the session run")
        try:
            values = fn(*args)
        except tf.errors.OpError as e:
            raise errors.from_tf_error(e) from e
        everything = dict(zip(signature.outputs, values))
        return {alias: everything[alias] for alias in fetches}

    def close(self) -> None:
        """Releases the session (and the memory of the graph's resources)."""
        session, self._session = self._session, None
        self._callables = {}
        if session is not None:
            session.close()
