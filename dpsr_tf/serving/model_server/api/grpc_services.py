"""gRPC services of the model server (grpc.aio): PredictionService and ModelService.

Each handler calls ServerCore and turns a ServingError into the same gRPC status code with a
truncated message (TF Serving's ToGRPCStatus). Blocking calls (metadata, classify, reload) run
in a thread so the event loop keeps serving Predict. Predict returns its answer as bytes,
serialized by the batch or run thread that computed it (a 256-row k=300 answer is megabytes:
grpc.aio's serializer would run on the loop). The call plumbing (safe decoding, aborts
without reference cycles, draining) is dpsr_tf/serving/grpc_calls.py, shared with the proxy.
"""
import asyncio
import dataclasses
import logging
import time
from typing import Optional

import grpc
from tensorflow_serving.apis import (model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.grpc_calls import (DRAINING, InFlight, abort, client_timeout,
                                        forwarded_client, outcome, plain_error)
from dpsr_tf.serving.model_server.api.predict import declared_elements
from dpsr_tf.serving.model_server.runs.run_queue import FairRunQueue

_LOG = logging.getLogger("serving.grpc")
# Requests up to this size are validated and converted on the calling thread (the event loop,
# or the framed hop's reader: tens of microseconds); larger ones in a decode thread, so that no
# request can stall the caller.
_INLINE_MAX_ELEMENTS = 4096
_INLINE_MAX_BYTES = 64 << 10
# The methods whose handlers return serialized answers (server.py registers them so).
RAW_RESPONSE_METHODS = ("Predict",)
# The longest forwarded client name kept (a peer address is under 64 characters).
_MAX_CLIENT_NAME = 256


def _client(context, peer: str):
    """Who a call is from, for the per-client queues and budgets: its connection, or (connection, the
    client a proxy forwards it for) when the call carries CLIENT_METADATA_KEY, so that the
    clients of one proxy connection take turns like direct ones. A client gains nothing by
    naming sub-clients itself that it could not gain by opening connections: the queues'
    totals bound them all."""
    named = forwarded_client(context)
    return peer if named is None else (peer, named[:_MAX_CLIENT_NAME])


def _serialize(response) -> bytes:
    """The answer's bytes (ServerCore.predict's `finish`: called by the thread of the run)."""
    return response.SerializeToString()


class _Canceller:
    """A call's done-callback that cancels `future` (the request's run) unless cleared."""

    __slots__ = ("future",)

    def __init__(self, future):
        self.future = future

    def __call__(self, _context) -> None:
        if self.future is not None:
            self.future.cancel()


@dataclasses.dataclass(frozen=True)
class SizedPredict:
    """A PredictRequest with the size of the bytes it came as, which decides where it is
    validated (PredictionServicer.start_predict) without encoding it again."""

    message: predict_pb2.PredictRequest
    size: int

    @classmethod
    def parse(cls, data: bytes) -> "SizedPredict":
        """Parses `data` (raises DecodeError as PredictRequest.FromString)."""
        return cls(predict_pb2.PredictRequest.FromString(data), len(data))


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService over a ServerCore.

    Args:
      core: ServerCore (its `unsent` budget counts the answers clients have not read).
      in_flight: InFlight of the server.
    """

    def __init__(self, core, in_flight: InFlight):
        self._core = core
        self._in_flight = in_flight
        self._unsent = core.unsent
        # Large requests are validated and converted here, clients in turn; one whose client
        # gave up before its turn is dropped unread (the framed hop uses them too).
        self.decode = FairRunQueue(2, core.options.max_queued_requests,
                                   core.options.max_queued_requests_per_client,
                                   thread_name="decode")

    def start_predict(self, request, deadline, client, size: Optional[int] = None):
        """Starts a Predict, for the gRPC handler and the framed hop alike.

        Args:
          request: the parsed PredictRequest.
          deadline: time.monotonic() seconds by which the client wants it (None: no deadline).
          client: the client's key in the server's queues.
          size: the bytes the request came as; None: computed (protobuf's ByteSize encodes
            the whole request, 2-7 ms for 4 MiB on the caller's thread).

        Returns:
          (future, decoding): a request small enough to validate on the calling thread (tens
          of microseconds) is run at once, and `future` is its run's, holding the answer's
          bytes (decoding False); a larger one is validated and converted in the decode
          threads, so that no request can stall the caller, and `future` is that work's,
          whose result is the run's future (decoding True).

        Raises:
          ServingError: the decode threads' queue refused a large request.
        """
        if (declared_elements(request) <= _INLINE_MAX_ELEMENTS
                and (request.ByteSize() if size is None else size) <= _INLINE_MAX_BYTES):
            return self._run(request, deadline, client), False
        return self.decode.submit(client, self._run, (request, deadline, client), deadline), True

    def _run(self, request, deadline, client):
        """The request's run (ServerCore.predict) with what is left of its deadline now."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self._core.predict(request, timeout, "GRPC", client, finish=_serialize)

    @property
    def draining(self) -> bool:
        """The server is shutting down: new calls are refused DRAINING."""
        return self._in_flight.draining

    async def Predict(self, request, context):
        """`request`: a PredictRequest, or a SizedPredict (the gRPC server's parser)."""
        size = None
        if isinstance(request, SizedPredict):
            request, size = request.message, request.size
        if not self._in_flight.track(context):
            return await abort(context, DRAINING)
        client = _client(context, context.peer())
        refusal = self._unsent.refusal(client)
        if refusal is not None:
            return await abort(context, refusal)
        timeout = client_timeout(context)
        try:
            future, decoding = self.start_predict(
                request, None if timeout is None else time.monotonic() + timeout, client, size)
        except ServingError as e:
            return await abort(context, plain_error(e))
        if decoding:
            future, error = await outcome(future)
            if error is not None:
                return await abort(context, error)
        # A client that cancels (or whose deadline passes) drops the run if it has not started.
        canceller = _Canceller(future)
        context.add_done_callback(canceller)
        response, error = await outcome(future)
        canceller.future = future = None  # a call held until its client reads keeps only this
        if error is None:
            # over the total budget: drop, not hold
            error = self._unsent.refusal(client, len(response))
        if error is not None:
            response = None
            return await abort(context, error)
        self._unsent.hold(context, client, len(response))
        return response

    async def _blocking(self, context, fn, *args):
        if not self._in_flight.track(context):
            return await abort(context, DRAINING)
        response, error = await outcome(
            asyncio.get_running_loop().run_in_executor(None, fn, *args))
        if error is not None:
            return await abort(context, error)
        return response

    async def GetModelMetadata(self, request, context):
        return await self._blocking(context, self._core.get_model_metadata, request)

    async def Classify(self, request, context):
        return await self._blocking(context, self._core.classify, request,
                                    client_timeout(context))

    async def Regress(self, request, context):
        return await self._blocking(context, self._core.regress, request,
                                    client_timeout(context))

    async def MultiInference(self, request, context):
        return await self._blocking(context, self._core.multi_inference, request,
                                    client_timeout(context))


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: GetModelStatus and HandleReloadConfigRequest.

    Args:
      core: ServerCore.
      allow_reload: False refuses HandleReloadConfigRequest with PERMISSION_DENIED.
      on_reload: optional callback(config) after a successful reload.
    """

    def __init__(self, core, allow_reload: bool = True, on_reload=None):
        self._core = core
        self._allow_reload = allow_reload
        self._on_reload = on_reload

    async def GetModelStatus(self, request, context):
        error = None
        try:
            return self._core.get_model_status(request)
        except ServingError as e:
            error = plain_error(e)
        return await abort(context, error)

    async def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        error = None
        if not self._allow_reload:
            error = ServingError(grpc.StatusCode.PERMISSION_DENIED,
                                 "this server refuses HandleReloadConfigRequest "
                                 "(--allow_reload_config_request=false)")
        else:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, self._core.reload_config, request.config)
                if self._on_reload is not None:
                    self._on_reload(request.config)
            except ServingError as e:
                error = plain_error(e)
        if error is not None:
            _LOG.error("HandleReloadConfigRequest failed: %s", error)
            return await abort(context, error)
        return response
