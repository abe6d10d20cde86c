"""ServerCore: the model server without its transports (gRPC and REST both call it).

It owns the version manager (loading, warm-up: warmup_replay.py, swapping), the batch
scheduler, the queue of unbatched runs (clients served in turn; expired and cancelled requests,
and those that cannot finish in their time left, never run: run_queue.py, run_times.py), and the
metrics, and implements each API call once:
predict (a Future, so gRPC/asyncio and REST/threads can both wait on it), get_model_metadata,
get_model_status, reload_config, classify, regress, multi_inference.
"""
import concurrent.futures
import dataclasses
import functools
import logging
import time
from typing import Callable, Optional

import grpc
from google.protobuf import any_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_pb2, regression_pb2)

from dpsr_tf.serving.config import BatchingOptions
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.metrics import UNKNOWN, ServerMetrics
from dpsr_tf.serving.model_server.api import inference, warmup_replay
from dpsr_tf.serving.model_server.api.predict import RequestLimits, build_response, prepare_predict
from dpsr_tf.serving.model_server.lifecycle.manager import ManagerOptions, VersionManager
from dpsr_tf.serving.model_server.lifecycle.servable import SavedModelServable, SessionOptions
from dpsr_tf.serving.model_server.lifecycle.servable_factory import new_servable
from dpsr_tf.serving.model_server.runs import chunked_runs
from dpsr_tf.serving.model_server.runs.batching import BatchScheduler
from dpsr_tf.serving.model_server.runs.chunked_runs import ChunkedRuns
from dpsr_tf.serving.model_server.runs.run_queue import STARTED, FairRunQueue
from dpsr_tf.serving.model_server.runs.run_times import FastestRuns
from dpsr_tf.serving.model_server.runs.unsent_answers import UnsentAnswers

_LOG = logging.getLogger("serving.core")
# predict(finish=OUTPUTS): the future holds the fetched outputs as arrays, no message (REST
# writes JSON from them: a message in between copied every value twice more).
OUTPUTS = "outputs"


@dataclasses.dataclass(frozen=True)
class CoreOptions:
    """Everything the core needs (the `dpsr serve` flags resolve into this).

    Attributes:
      session: how sessions are created.
      manager: version manager settings.
      batching: server-side batching, or None to run each request on its own.
      limits: request validation limits.
      enable_model_warmup: replay assets.extra/tf_serving_warmup_requests before serving.
      num_request_iterations_for_warmup: replays per warm-up record.
      request_timeout_seconds: server-side deadline of every request (0: client's only).
      num_run_threads: threads for requests that do not go through the batcher.
      max_queued_requests: most unbatched requests waiting for a run thread, all clients
        together (beyond it: UNAVAILABLE).
      max_queued_requests_per_client: the same for one client (beyond it:
        RESOURCE_EXHAUSTED).
      max_run_threads_per_client: most run threads one client holds at once (0: all).
      max_short_runs: most run threads short runs (expected at most 2 ms) hold at once, all
        clients together (0: all; run_queue.py).
      queue_target_seconds, queue_interval_seconds: the run queue's queue delay control
        (queue_delay.py): a client whose oldest waiting request has waited past the target
        for a whole interval has new requests refused at once; target 0: off (the default,
        and behind the native front end, which applies the same rule before its calls get
        here).
      max_unsent_response_bytes_per_client: a gRPC client holding this many bytes of answers
        it has not read has its queued requests wait (0: no limit; unsent_answers.py).
      max_unsent_response_bytes: while all clients hold this many, new calls and ready
        answers of clients holding more than 64 KiB are refused RESOURCE_EXHAUSTED (0: no
        limit). Both count serialized bytes; a held answer costs several times that in
        memory (docs/benchmarks.md, "Misbehaving clients"), hence the small defaults.
      max_rows_per_run: an unbatched request of more rows runs as several session runs of
        at most this many rows, one after another, and stops before its next one once its
        caller gave up or its deadline passed (chunked_runs.py); 0: one run per request (TF
        Serving's behaviour); chunked_runs.AUTO: chunks for servables written by `dpsr
        export` only.
      enable_signature_method_name_check: Predict, Classify and Regress refuse signatures of
        another method (TF Serving's flag; off by default, so TF2 SavedModels, whose
        signatures say `predict`, classify and regress too).
    """

    session: SessionOptions = SessionOptions()
    manager: ManagerOptions = ManagerOptions()
    batching: Optional[BatchingOptions] = None
    limits: RequestLimits = RequestLimits()
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    request_timeout_seconds: float = 30.0
    num_run_threads: int = 8
    max_queued_requests: int = 1024
    max_queued_requests_per_client: int = 256
    max_run_threads_per_client: int = 0
    max_short_runs: int = 0
    queue_target_seconds: float = 0.0
    queue_interval_seconds: float = 0.1
    max_unsent_response_bytes_per_client: int = 4 << 20
    max_unsent_response_bytes: int = 8 << 20
    max_rows_per_run: int = chunked_runs.AUTO
    enable_signature_method_name_check: bool = False


class ServerCore:
    """The serving logic shared by the gRPC services and the REST gateway."""

    def __init__(self, options: CoreOptions, metrics: Optional[ServerMetrics] = None):
        self.options = options
        self.metrics = metrics or ServerMetrics()
        self.manager = VersionManager(options.manager, self._load, self._on_version_change)
        self.unsent = UnsentAnswers(options.max_unsent_response_bytes_per_client,
                                    options.max_unsent_response_bytes, self.metrics)
        self._runs = FairRunQueue(options.num_run_threads, options.max_queued_requests,
                                  options.max_queued_requests_per_client,
                                  on_event=self._on_run_event,
                                  gate=self.unsent.gate,
                                  max_running_per_client=options.max_run_threads_per_client,
                                  max_running_short=options.max_short_runs,
                                  queue_target=options.queue_target_seconds,
                                  queue_interval=options.queue_interval_seconds)
        self.unsent.on_release = self._runs.wake
        self.metrics.queued_requests.set_function(lambda: self._runs.queued)
        self._run_times = FastestRuns()  # of unbatched runs (the batcher keeps its own)
        # Metric children by their label values: prometheus_client's labels() takes a lock and
        # checks every value on each call (7 us each, five per request). The values are few
        # (models, versions, APIs, status codes) and prometheus_client keeps every child it
        # made anyway; a race only makes the same child twice.
        self._children = {}
        self._chunked = ChunkedRuns(options.max_rows_per_run)
        self._scheduler = None
        if options.batching is not None:
            self._scheduler = BatchScheduler(options.batching, on_batch=self._on_batch,
                                             gate=self.unsent.gate)
            self.unsent.on_release = self._wake_queues

    def _wake_queues(self) -> None:
        self._runs.wake()
        self._scheduler.wake()

    # ------------------------------------------------------------------ life cycle

    def start(self, server_config) -> None:
        """Loads the initial models (blocking) and starts polling the file system."""
        self.manager.set_config(server_config)
        self.manager.start_polling()

    def stop(self) -> None:
        """Finishes queued work, unloads every version."""
        if self._scheduler is not None:
            self._scheduler.close()
        self._runs.close()
        self.manager.stop()

    def reload_config(self, server_config) -> None:
        """HandleReloadConfigRequest / --model_config_file polling (blocks until loaded)."""
        self.manager.set_config(server_config)

    # ------------------------------------------------------------------ loading

    def _load(self, name: str, version: int, path: str) -> SavedModelServable:
        servable = new_servable(name, version, path, self.options.session)
        try:
            servable.load()
            if self.options.enable_model_warmup:
                warmup_replay.warm_up(servable, self.options.limits,
                                      self.options.num_request_iterations_for_warmup,
                                      self.options.enable_signature_method_name_check)
        except Exception:
            servable.close()
            self.metrics.load_count.labels(name, "error").inc()
            raise
        self.metrics.load_count.labels(name, "ok").inc()
        return servable

    def _on_version_change(self, name, version, available):
        if available is None:
            return
        self.metrics.available.labels(name, str(version)).set(1 if available else 0)

    def _child(self, metric, *values):
        """metric.labels(*values), made once."""
        key = (id(metric),) + values
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def _on_run_event(self, event, model, runs_ahead):
        model = self._label(model)
        if event == STARTED:
            self._child(self.metrics.runs_started, model).inc()
            self._child(self.metrics.runs_ahead, model).observe(runs_ahead)
        else:
            self.metrics.requests_dropped.labels(model, event).inc()

    def _on_batch(self, key, rows, padded):
        del padded
        servable_id, model, version = key[0], key[1], key[2]
        del servable_id
        self.metrics.batch_size.labels(model, str(version)).observe(rows)

    # ------------------------------------------------------------------ helpers

    def _deadline(self, client_timeout: Optional[float]) -> Optional[float]:
        now = time.monotonic()
        limits = []
        if client_timeout is not None:
            limits.append(now + client_timeout)
        if self.options.request_timeout_seconds > 0:
            limits.append(now + self.options.request_timeout_seconds)
        return min(limits) if limits else None

    def _label(self, name: str) -> str:
        return name if name in self.manager.model_names() else UNKNOWN

    def _record(self, api, entrypoint, name, version, code, start):
        model = self._label(name)
        v = str(version) if version is not None else ""
        self._child(self.metrics.request_count, model, v, api, entrypoint, code.name).inc()
        self._child(self.metrics.request_latency, model, v, api, entrypoint).observe(
            time.monotonic() - start)

    def _timed_run(self, servable, signature, fetches, batched: bool = False):
        latency = self._child(self.metrics.runtime_latency, servable.name, str(servable.version))

        def run(feeds, timeout_s):
            start = time.monotonic()
            try:
                if batched:
                    return servable.run(signature, feeds, fetches, timeout_s, batched=True)
                return servable.run(signature, feeds, fetches, timeout_s)
            finally:
                latency.observe(time.monotonic() - start)
        return run

    def _timed_alone(self, servable, sig, prepared, run):
        """(run that records its time, cannot_finish, size) for the run queue of an unbatched
        request: one that cannot finish in its time left is not run, and one whose size has
        run fast counts as short (run_times.py, run_queue.py). Requests whose rows are unknown
        (not batch-major) are run as they are."""
        if prepared.rows is None:
            return run, None, None
        rows = prepared.rows
        key = ((id(servable), servable.name, servable.version, sig.name) + prepared.batch_key
               + tuple(prepared.feeds[a].shape[1:] for a in prepared.batched))
        run_times = self._run_times

        def timed(feeds, timeout_s):
            start = time.monotonic()
            out = run(feeds, timeout_s)
            run_times.record(key, rows, time.monotonic() - start)
            return out

        return timed, functools.partial(run_times.cannot_finish, key, rows), (key, rows)

    # ------------------------------------------------------------------ Predict

    def predict(self, request, client_timeout: Optional[float] = None,
                entrypoint: str = "GRPC", client=None,
                finish: Optional[Callable] = None) -> concurrent.futures.Future:
        """Runs a PredictRequest.

        Args:
          request: predict_pb2.PredictRequest.
          client_timeout: seconds left of the client's deadline (None: none; <= 0: the
            request is refused DEADLINE_EXCEEDED without being validated).
          entrypoint: "GRPC" or "REST" (metrics label).
          client: who sent it (the gRPC peer); unbatched runs serve clients in turn, and
            clients share a batch queue fairly.
            None: the entrypoint's shared queue.
          finish: optional finish(response) -> what the future holds instead of the response,
            called by the thread that completes the run (gRPC passes the serializer, so that
            the event loop never serializes an answer); its errors fail the request INTERNAL.
            OUTPUTS: the future holds {alias: np.ndarray} of the fetched outputs instead.

        Returns:
          Future of predict_pb2.PredictResponse (or finish(response)); it fails with ServingError (errors carry
          no traceback, so a refused request is freed at once, not by a garbage collection).
          Cancelling it drops the request's run if that has not started.
        """
        start = time.monotonic()
        outer = concurrent.futures.Future()
        name = request.model_spec.name
        error = None
        try:
            _require_model_spec(request)
            if client_timeout is not None and client_timeout <= 0:
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   "the client's deadline passed before the request was read")
            handle = self.manager.acquire(request.model_spec)
        except ServingError as e:
            error = _as_serving_error(e)
        if error is not None:
            self._record("predict", entrypoint, name, None, error.code, start)
            outer.set_exception(error)
            return outer
        servable = handle.servable
        error = None
        stop = None  # stops a request run in chunks (chunked_runs.py) when its caller gives up
        try:
            deadline = self._deadline(client_timeout)
            sig = servable.signature(request.model_spec.signature_name)
            prepared = prepare_predict(sig, request, self.options.limits,
                                       self.options.enable_signature_method_name_check)
            batched = self._scheduler is not None and prepared.rows is not None
            run = self._timed_run(servable, sig, prepared.fetches, batched)
            if batched:
                key = (id(servable), servable.name, servable.version) + prepared.batch_key
                # Inputs of other trailing shapes join only when the scheduler pads them.
                key += tuple(
                    prepared.feeds[a].ndim if self.options.batching.pad_variable_length_inputs
                    else prepared.feeds[a].shape[1:] for a in prepared.batched)
                inner = self._scheduler.submit(key, prepared.feeds, prepared.rows,
                                               prepared.batched, run, deadline,
                                               entrypoint if client is None else client)
            else:
                chunked = self._chunked.wrap((id(servable), servable.name, servable.version,
                                              sig.name), run, prepared.rows, prepared.batched,
                                             sig.batchable,
                                             servable.rows_independent)
                if chunked is not None:
                    run, stop = chunked
                run, cannot_finish, size = self._timed_alone(servable, sig, prepared, run)
                inner = self._runs.submit(entrypoint if client is None else client,
                                          _run_until, (run, prepared.feeds, deadline), deadline,
                                          servable.name, cannot_finish, size)
        except Exception as e:  # pylint: disable=broad-except
            error = _as_serving_error(e)
        if error is not None:
            handle.release()
            self._record("predict", entrypoint, name, servable.version, error.code, start)
            outer.set_exception(error)
            return outer

        # The callbacks name each other's futures, and a Future keeps its callbacks after
        # calling them: outer -> abandon -> inner -> done -> outer was a reference cycle that
        # held the answer until a full garbage collection (all of a flood's answers), and a
        # batch thread still holding its last batch's `inner` held the answers. `done` empties
        # `link` once outer is settled, which unlinks both.
        link = {"run": inner, "caller": outer, "stop": stop}

        def done(fut):
            caller = link["caller"]
            try:
                error = _future_error(fut)
                response = None
                if error is None:
                    try:
                        if finish is OUTPUTS:
                            outputs = fut.result()
                            response = {a: outputs[a] for a in prepared.fetches}
                        else:
                            response = build_response(servable.name, servable.version,
                                                      sig.name, fut.result(), prepared.fetches)
                            if finish is not None:
                                response = finish(response)
                    except Exception as e:  # pylint: disable=broad-except
                        error = _as_serving_error(e)
                code = grpc.StatusCode.OK if error is None else error.code
                self._record("predict", entrypoint, name, servable.version, code, start)
                _settle(caller, result=response, exception=error)
            finally:
                link.clear()
                handle.release()

        def abandon(fut):
            run = link.get("run")
            if run is not None and fut.cancelled():  # the caller gave up: drop the run if
                run.cancel()                         # it has not started, or stop it
                if link.get("stop") is not None:     # before its next chunk
                    link["stop"].set()

        inner.add_done_callback(done)
        outer.add_done_callback(abandon)
        return outer

    # ------------------------------------------------------------------ metadata and status

    def get_model_metadata(self, request):
        """GetModelMetadataResponse with the SignatureDefMap (metadata_field "signature_def")."""
        _require_model_spec(request)
        fields = list(request.metadata_field)
        if not fields:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != "signature_def":
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Metadata field {field} is not supported")
        handle = self.manager.acquire(request.model_spec)
        try:
            servable = handle.servable
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for key, sig in servable.signatures.items():
                sig_map.signature_def[key].CopyFrom(sig.proto)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            packed = any_pb2.Any()
            packed.Pack(sig_map)
            response.metadata["signature_def"].CopyFrom(packed)
            return response
        finally:
            handle.release()

    def get_model_status(self, request):
        _require_model_spec(request)
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.extend(self.manager.model_status(request.model_spec))
        return response

    # ------------------------------------------------------------------ Classify / Regress

    def _with_servable(self, model_spec, fn, client_timeout):
        if not model_spec.ByteSize() and not model_spec.name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        handle = self.manager.acquire(model_spec)
        try:
            deadline = self._deadline(client_timeout)
            timeout = None if deadline is None else max(0.001, deadline - time.monotonic())
            return fn(handle.servable, timeout)
        finally:
            handle.release()

    def classify(self, request, client_timeout=None):
        return self._example_api(request, "classify", inference.run_classify,
                                 classification_pb2.ClassificationResponse(), client_timeout)

    def regress(self, request, client_timeout=None):
        return self._example_api(request, "regress", inference.run_regress,
                                 regression_pb2.RegressionResponse(), client_timeout)

    def _example_api(self, request, api: str, run, response, client_timeout):
        """Classify or Regress: `run` (inference.run_classify/run_regress) on the request's
        examples; its result and the answering model's spec fill `response`."""
        def fn(servable, timeout):
            sig = servable.signature(request.model_spec.signature_name, api)
            examples = inference.serialized_examples(request.input, self.options.limits.max_rows)
            response.result.CopyFrom(run(servable, sig, examples, timeout,
                                         self.options.enable_signature_method_name_check))
            _fill_spec(response.model_spec, servable, sig.name)
            return response
        return self._with_servable(request.model_spec, fn, client_timeout)

    def multi_inference(self, request, client_timeout=None):
        tasks = inference.multi_inference_tasks(request)

        def fn(servable, timeout):
            examples = inference.serialized_examples(request.input, self.options.limits.max_rows)
            response = inference.new_multi_inference_response()
            for task in tasks:
                sig = servable.signature(task.model_spec.signature_name, "multi_inference")
                result = response.results.add()
                _fill_spec(result.model_spec, servable, sig.name)
                if task.method_name == inference.CLASSIFY_METHOD:
                    result.classification_result.CopyFrom(
                        inference.run_classify(servable, sig, examples, timeout,
                                       self.options.enable_signature_method_name_check))
                else:
                    result.regression_result.CopyFrom(
                        inference.run_regress(servable, sig, examples, timeout,
                                      self.options.enable_signature_method_name_check))
            return response
        return self._with_servable(tasks[0].model_spec, fn, client_timeout)


def _require_model_spec(request) -> None:
    """TF Serving answers a request without a model_spec INVALID_ARGUMENT."""
    if not request.HasField("model_spec"):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


def _settle(future: concurrent.futures.Future, result=None, exception=None) -> None:
    """Completes `future` unless the caller gave up on it (a client that disconnected cancels
    the future its handler awaited; that is not an error of the server)."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


def _fill_spec(spec: "model_pb2.ModelSpec", servable, signature_name: str) -> None:
    spec.name = servable.name
    spec.version.value = servable.version
    spec.signature_name = signature_name


def _as_serving_error(error: BaseException) -> ServingError:
    """A new ServingError with the code and message of `error` and no traceback or context:
    the caught error's traceback holds the frames of the request's handling (the request, its
    converted inputs, the future it fails), a reference cycle that only a full garbage
    collection frees, and a server that froze its heap at start rarely runs one."""
    if isinstance(error, ServingError):
        return ServingError(error.code, error.message)
    if isinstance(error, concurrent.futures.CancelledError):
        return ServingError(grpc.StatusCode.CANCELLED, "request cancelled")
    _LOG.error("internal error", exc_info=error)
    return ServingError(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")


def _future_error(future: concurrent.futures.Future) -> Optional[ServingError]:
    """The error a finished future failed with (a new one, see _as_serving_error), or None.
    Reads it without raising it here: a raised error's traceback would hold this frame, which
    holds the future, which holds the error."""
    if future.cancelled():
        return ServingError(grpc.StatusCode.CANCELLED, "request cancelled")
    error = future.exception()
    return None if error is None else _as_serving_error(error)


def _run_until(run, feeds, deadline: Optional[float]):
    """run(feeds, seconds left of `deadline`), counted from when the run starts."""
    timeout = None if deadline is None else max(0.001, deadline - time.monotonic())
    return run(feeds, timeout)

