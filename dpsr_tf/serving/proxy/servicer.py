"""The proxy's PredictionService: routes, fans a call out to every index shard and merges.

For each model (dpsr_tf/serving/proxy/config.py) it knows the shards and, per shard, the
replicas that hold it. A Predict call is sent to one replica of every shard at once, hedged to
another replica of a shard that is slow to answer and failed over from one that fails
(dpsr_tf/serving/proxy/shard_call.py); replicas that keep failing or timing out leave the
rotation for a while (outlier ejection, dpsr_tf/serving/proxy/routing.py). Each shard answer is
checked against the request before it is parsed (dpsr_tf/serving/proxy/shard_answers.py); the
answers are merged into one global top-K (dpsr_tf/serving/proxy/merge.py), in a worker thread
when the merge is large, so that the event loop keeps serving other calls. One client
connection may have at most max_concurrent_calls_per_peer calls in flight
(dpsr_tf/serving/proxy/peer_limits.py). A signature with dense feedback rounds is answered in
two: the shards' first hits, then the search along the direction pooled from them
(dpsr_tf/serving/proxy/feedback_rounds.py).

Deadlines: each request gets min(client deadline, model deadline_ms); shards must answer by
the shard deadline (shard_deadline_ms, at most 80% of the request's budget), so a shard that is
down or slow is left out in time to answer with the rest. Such answers carry a clear flag: the
output "partial" (DT_BOOL scalar; false when every shard answered) and trailing metadata
`dpsr-partial: true` and `dpsr-missing-shards: 1,3`. With partial_policy FAIL a missing shard
fails the request with UNAVAILABLE instead. Client errors from the shards (INVALID_ARGUMENT,
NOT_FOUND, ...) are returned as they are; a request over the servers' input limits is refused
by the proxy itself before it waits for a backend slot (dpsr_tf/serving/proxy/request_checks.py).
"""
import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import time
from typing import Optional

import grpc
import numpy as np
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from dpsr_tf.serving import tensors
from dpsr_tf.serving.errors import ServingError, truncate
from dpsr_tf.serving.front_end import client_of
from dpsr_tf.serving.grpc_calls import DRAINING, InFlight, client_timeout
from dpsr_tf.serving.metrics import UNKNOWN, ProxyMetrics
from dpsr_tf.serving.proxy import feedback_rounds, merge, shard_answers
from dpsr_tf.serving.proxy.forwarding import ReceivedPredict, backend_payload
from dpsr_tf.serving.proxy.peer_limits import BackendGate, PeerLimiter, current_peer
from dpsr_tf.serving.proxy.request_checks import ProxyRequestLimits, check_predict_inputs
from dpsr_tf.serving.proxy.routing import Route, Router
from dpsr_tf.serving.proxy.shard_call import CLIENT_ERRORS, ShardCaller

_LOG = logging.getLogger("serving.proxy")
PARTIAL_OUTPUT = "partial"
# Merges pooling more shard entries than this run in a worker thread (a 10x100 merge takes
# well under a millisecond inline; a 256x1000 one tens of milliseconds).
_INLINE_MERGE_ENTRIES = 4096
_MERGE_THREADS = 2


@dataclasses.dataclass(frozen=True)
class SignaturePlan:
    """How the proxy answers a sharded signature: merged from every shard (else one shard's
    answer, e.g. query_embedding), and whether in two dense feedback rounds."""

    mergeable: bool = True
    feedback_rounds: bool = False


def _not_found(model_spec) -> ServingError:
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        what = f"Specific({model_spec.name}, {model_spec.version.value})"
    elif choice == "version_label":
        what = f"Labeled({model_spec.name}, {model_spec.version_label})"
    else:
        what = f"Latest({model_spec.name})"
    return ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {what}")


class ProxyServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService that routes, fans out and merges."""

    def __init__(self, router: Router, metrics: ProxyMetrics, max_calls_per_peer: int = 0,
                 max_backend_calls: int = 0, max_backend_calls_per_peer: int = 0,
                 behind_front_end: bool = False,
                 input_limits: ProxyRequestLimits = ProxyRequestLimits()):
        self.metrics = metrics
        self.input_limits = input_limits
        self._behind_front_end = behind_front_end  # clients named by its metadata
        self.peers = PeerLimiter(max_calls_per_peer)
        self.backends = BackendGate(max_backend_calls, max_backend_calls_per_peer or None)
        self._caller = ShardCaller(router.settings, metrics)
        self.router = router
        self.in_flight = InFlight()
        self._merge_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=_MERGE_THREADS, thread_name_prefix="proxy-merge")

    def close(self) -> None:
        """Stops the merge threads (after the server has stopped)."""
        self._merge_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def router(self) -> Router:
        return self._router

    @router.setter
    def router(self, router: Router) -> None:
        self._router = router
        self._caller.settings = router.settings

    # ------------------------------------------------------------------ backend calls

    async def _call_shard(self, route: Route, shard: int, method: str, request,
                          deadline: float, payload: Optional[bytes] = None):
        return await self._caller.call(route, shard, method, request, deadline,
                                       payload=payload)

    def _route(self, model_spec) -> Route:
        route = self.router.routes.get(model_spec.name)
        if route is None:
            raise _not_found(model_spec)
        return route

    def _budget(self, route: Route, context) -> float:
        budget = route.spec.deadline_s
        client = client_timeout(context)
        return budget if client is None else min(budget, client)

    async def _run(self, api: str, model_name: str, context, coro, check=None):
        """Runs `coro` (the call's work) once the client and the backends have room for it;
        `check()`, when given, refuses the request (ServingError) before it waits for that."""
        start = time.monotonic()
        label = model_name if model_name in self.router.routes else UNKNOWN
        code = grpc.StatusCode.OK
        if not self.in_flight.track(context):
            coro.close()  # never started: the proxy is draining
            code = DRAINING.code
            self.metrics.request_count.labels(label, api, code.name).inc()
            await context.abort(code, DRAINING.message)
        peer = client_of(context, context.peer(), self._behind_front_end)
        try:
            self.peers.acquire(peer)
        except ServingError as e:
            coro.close()  # never started: this client has too many calls in flight
            self.metrics.request_count.labels(label, api, e.code.name).inc()
            await context.abort(e.code, e.message)
        gated = False
        try:
            if check is not None:
                check()
            route = self.router.routes.get(model_name)
            await self.backends.acquire(peer, client_timeout(context) if route is None
                                        else self._budget(route, context))
            gated = True
            current_peer.set(peer)  # backend calls carry it (their tasks copy the context)
            return await coro
        except ServingError as e:
            code = e.code
            e.__traceback__ = None  # its frames hold the request: free it with the call
            await context.abort(e.code, truncate(e.message))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            if not gated:
                coro.close()  # never started: it waited for backend capacity in vain
            else:
                self.backends.release(peer)
            self.peers.release(peer)
            self.metrics.request_count.labels(label, api, code.name).inc()
            self.metrics.request_latency.labels(label, api).observe(time.monotonic() - start)

    # ------------------------------------------------------------------ Predict

    async def Predict(self, request, context):
        """`request`: a PredictRequest, or a ReceivedPredict with the bytes it came as (what
        the proxy's gRPC and framed calls parse), which the shards then get as they are."""
        if not isinstance(request, ReceivedPredict):
            request = ReceivedPredict(request)
        return await self._run("predict", request.message.model_spec.name, context,
                               self._predict(request, context),
                               functools.partial(self._refuse_early, request))

    def _refuse_early(self, received: ReceivedPredict) -> None:
        """Refuses a request for an unknown model (NOT_FOUND, first, as the servers answer), or
        one over the servers' input limits: as every shard would refuse it, instead of copying
        it to each of them."""
        self._route(received.message.model_spec)
        check_predict_inputs(received.message, self.input_limits, received.data)

    async def _predict(self, received: ReceivedPredict, context):
        request = received.message  # what the shards get, but for the model's name
        route = self._route(request.model_spec)
        spec = route.spec
        start = time.monotonic()
        budget = self._budget(route, context)
        if not spec.sharded:
            response = await self._call_shard(
                route, 0, "Predict", request, start + budget,
                payload=backend_payload(received, spec.backend_model_name))
            response.model_spec.name = spec.name
            return response
        shard_budget = min(spec.shard_deadline_s or 0.8 * spec.deadline_s, 0.8 * budget)
        signature = request.model_spec.signature_name or "serving_default"
        if signature.endswith(feedback_rounds.HITS_SUFFIX):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"signature '{signature}' is dense feedback's first round, which "
                               f"the proxy runs itself on every shard of {spec.name}; call "
                               f"'{signature[:-len(feedback_rounds.HITS_SUFFIX)]}'")
        plan = await self._plan(route, signature, start + shard_budget)
        if not plan.mergeable:
            # e.g. query_embedding: every shard computes the same answer; ask one.
            response = await self._first_shard(
                "Predict", route, request, start + budget,
                backend_payload(received, spec.backend_model_name))
            response.model_spec.name = spec.name
            return response
        wanted = list(request.output_filter)
        added = [a for a in (spec.id_output, spec.score_output) if wanted and a not in wanted]
        payload = backend_payload(received, spec.backend_model_name, added)
        k = shard_answers.request_k(request, spec.k_input)
        rows = shard_answers.request_rows(request)
        failed_first, shards = [], range(len(route.shards))
        if plan.feedback_rounds:
            # Round one gets half the shards' budget; the search the rest.
            backend = predict_pb2.PredictRequest.FromString(payload)
            try:
                search, failed_first, left_out = await self._feedback_round(
                    route, backend, signature, rows, start + shard_budget / 2)
                request, payload = search, search.SerializeToString()
                shards = [s for s in shards if s not in left_out]
            except ServingError as e:
                if e.code != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                # No S.feedback_hits (a version without feedback rolled out since the plan was
                # learned): learn it again and answer in one round.
                route.mergeable.pop(signature, None)
        results, failed = await self._fan_out(
            route, request, start + shard_budget, lambda s: functools.partial(
                shard_answers.parse_shard_answer, rows=rows, k=k,
                where=f"shard {s} of {spec.name}", id_output=spec.id_output,
                score_output=spec.score_output), shards, payload)
        answers, work = [], 0
        for s, result in results:
            try:
                work += shard_answers.check_answer_size(
                    result, rows, k, f"shard {s} of {spec.name}", spec.id_output,
                    spec.score_output)
            except ServingError as e:
                failed.append((s, e))
                continue
            answers.append(result)
        failed = sorted(failed + [(s, e) for s, e in failed_first
                                  if s not in {f for f, _ in failed}], key=lambda f: f[0])
        self._require(route, answers, failed)
        merge_args = (answers, k, spec.id_output, spec.score_output, wanted)
        if work <= _INLINE_MERGE_ENTRIES:
            response = merge.merge_responses(*merge_args)
        else:  # off the event loop: other requests keep flowing while this one merges
            response = await asyncio.get_running_loop().run_in_executor(
                self._merge_pool, merge.merge_responses, *merge_args)
        response.model_spec.CopyFrom(answers[0].model_spec)
        response.model_spec.name = spec.name
        response.model_spec.signature_name = signature  # not round two's
        tensors.from_ndarray(np.array(bool(failed)), response.outputs[PARTIAL_OUTPUT])
        missing = ",".join(str(s) for s, _ in failed)
        context.set_trailing_metadata((("dpsr-partial", "true" if failed else "false"),
                                       ("dpsr-missing-shards", missing)))
        if failed:
            self.metrics.partial_count.labels(spec.name).inc()
            _LOG.warning("partial answer for %s: shards %s failed: %s", spec.name, missing,
                         "; ".join(e.message for _, e in failed))
        return response

    async def _fan_out(self, route: Route, request, deadline, parse, shards=None,
                       payload: Optional[bytes] = None):
        """Every shard's (or the listed shards') answer to a Predict `request` (sent as
        `payload` when given; parse(s): shard s's answer from its bytes):
        ([(shard, answer)], [(shard, ServingError)]).

        Raises:
          ServingError: a shard's client error (INVALID_ARGUMENT, ...), as it is.
        """
        shards = list(range(len(route.shards)) if shards is None else shards)
        results = await asyncio.gather(
            *(self._caller.call(route, s, "Predict", request, deadline, parse(s), payload)
              for s in shards), return_exceptions=True)
        answers, failed = [], []
        for s, result in zip(shards, results):
            if isinstance(result, ServingError):
                if result.code in CLIENT_ERRORS:
                    raise result
                failed.append((s, result))
            elif isinstance(result, BaseException):
                failed.append((s, ServingError(grpc.StatusCode.INTERNAL, repr(result))))
            else:
                answers.append((s, result))
        return answers, failed

    @staticmethod
    def _require(route: Route, answers, failed) -> None:
        """Raises when no shard answered, or some did not under partial_policy FAIL."""
        spec, total = route.spec, len(route.shards)
        if not answers:
            codes = {e.code for _, e in failed}
            code = codes.pop() if len(codes) == 1 else grpc.StatusCode.UNAVAILABLE
            raise ServingError(code, f"all {total} shards of {spec.name} failed: " +
                               "; ".join(e.message for _, e in failed))
        if failed and not spec.allow_partial:
            raise ServingError(grpc.StatusCode.UNAVAILABLE,
                               f"{len(failed)} of {total} shards of {spec.name} failed "
                               "and partial_policy is FAIL: " +
                               "; ".join(e.message for _, e in failed))

    async def _feedback_round(self, route: Route, backend, signature: str, rows, deadline):
        """Dense feedback's first round (feedback_rounds.py): every shard's first hits, pooled
        into each query's direction.

        Returns:
          (the second round's request, [(shard, error)] of shards whose hits are missing from
          the direction (the answer is partial), the shards round two must skip: those whose
          hits have other dimensions than most shards', which would refuse the direction).
        """
        spec = route.spec
        hits, failed = await self._fan_out(
            route, feedback_rounds.hits_request(backend, signature, spec.k_input), deadline,
            lambda s: functools.partial(feedback_rounds.parse_hits, rows=rows,
                                        where=f"shard {s} of {spec.name}"))
        self._require(route, hits, failed)
        pooled = sum(scores.size for _, (scores, _) in hits) * hits[0][1][1].shape[2]
        if pooled <= _INLINE_MERGE_ENTRIES:
            direction, left_out = feedback_rounds.direction(hits, spec.name)
        else:  # off the event loop, as a large merge
            direction, left_out = await asyncio.get_running_loop().run_in_executor(
                self._merge_pool, feedback_rounds.direction, hits, spec.name)
        failed += left_out
        self._require(route, hits, failed)   # under partial_policy FAIL, a left-out shard fails
        return (feedback_rounds.search_request(backend, signature, direction), failed,
                {s for s, _ in left_out})

    # ------------------------------------------------------------------ other calls

    async def GetModelMetadata(self, request, context):
        return await self._run("metadata", request.model_spec.name, context,
                               self._metadata(request, context))

    async def _first_shard(self, method, route: Route, request, deadline,
                           payload: Optional[bytes] = None):
        """The answer of the first shard that gives one (for calls every shard answers alike)."""
        error = None
        for s in range(len(route.shards)):
            try:
                return await self._call_shard(route, s, method, request, deadline, payload)
            except ServingError as e:
                if e.code in CLIENT_ERRORS:
                    raise
                error = e
        raise error

    async def _plan(self, route: Route, signature: str, deadline) -> "SignaturePlan":
        """How a signature's Predict calls are answered, learned from GetModelMetadata (cached;
        refreshed in the background after a minute). Merged from every shard when it cannot be
        learned, so that errors surface from Predict itself."""
        cached = route.mergeable.get(signature)
        if cached is not None:
            if time.monotonic() - cached[1] > 60 and signature not in route.refreshing:
                route.refreshing.add(signature)
                asyncio.ensure_future(self._learn_plan(
                    route, signature, time.monotonic() + route.spec.deadline_s))
            return cached[0]
        return await self._learn_plan(route, signature, deadline)

    async def _learn_plan(self, route: Route, signature: str, deadline) -> "SignaturePlan":
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = route.spec.backend_model_name
        try:
            response = await self._first_shard("GetModelMetadata", route, request, deadline)
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(sig_map)
        except ServingError:
            return SignaturePlan()
        finally:
            route.refreshing.discard(signature)
        if signature not in sig_map.signature_def:
            return SignaturePlan()
        outputs = sig_map.signature_def[signature].outputs
        plan = SignaturePlan(
            mergeable=route.spec.id_output in outputs and route.spec.score_output in outputs,
            feedback_rounds=feedback_rounds.has_rounds(sig_map, signature))
        route.mergeable[signature] = (plan, time.monotonic())
        return plan

    async def _metadata(self, request, context):
        route = self._route(request.model_spec)
        backend = get_model_metadata_pb2.GetModelMetadataRequest()
        backend.CopyFrom(request)
        backend.model_spec.name = route.spec.backend_model_name
        deadline = time.monotonic() + self._budget(route, context)
        response = await self._first_shard("GetModelMetadata", route, backend, deadline)
        response.model_spec.name = route.spec.name
        if route.spec.sharded and "signature_def" in response.metadata:
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(sig_map)
            for sig in sig_map.signature_def.values():
                if route.spec.id_output in sig.outputs:
                    info = sig.outputs[PARTIAL_OUTPUT]
                    info.name = "dpsr_proxy/partial"
                    info.dtype = types_pb2.DT_BOOL
                    info.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto())
            response.metadata["signature_def"].Pack(sig_map)
        return response

    def _unsharded_route(self, model_spec, method: str):
        """The route of an unsharded model: only Predict merges shard answers."""
        route = self._route(model_spec)
        if route.spec.sharded:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"{method} is not available for the sharded model "
                               f"{route.spec.name}; use Predict")
        return route

    async def _forward_unsharded(self, method, request, context):
        route = self._unsharded_route(request.model_spec, method)
        backend = type(request)()
        backend.CopyFrom(request)
        backend.model_spec.name = route.spec.backend_model_name
        response = await self._call_shard(route, 0, method, backend,
                                          time.monotonic() + self._budget(route, context))
        response.model_spec.name = route.spec.name
        return response

    async def Classify(self, request, context):
        return await self._run("classify", request.model_spec.name, context,
                               self._forward_unsharded("Classify", request, context))

    async def Regress(self, request, context):
        return await self._run("regress", request.model_spec.name, context,
                               self._forward_unsharded("Regress", request, context))

    async def MultiInference(self, request, context):
        name = request.tasks[0].model_spec.name if request.tasks else ""
        if not request.tasks:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "MultiInferenceRequest has no tasks")
        route_coro = self._multi(request, context)
        return await self._run("multi_inference", name, context, route_coro)

    async def _multi(self, request, context):
        route = self._unsharded_route(request.tasks[0].model_spec, "MultiInference")
        backend = type(request)()
        backend.CopyFrom(request)
        for task in backend.tasks:
            task.model_spec.name = route.spec.backend_model_name
        response = await self._call_shard(route, 0, "MultiInference", backend,
                                          time.monotonic() + self._budget(route, context))
        for result in response.results:
            result.model_spec.name = route.spec.name
        return response
