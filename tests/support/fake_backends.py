"""Scripted backends and an in-process proxy for proxy tests: real gRPC servers in the test
process, each answering as a test says."""
import asyncio
import concurrent.futures
import threading

import grpc
from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from dpsr_tf.serving.proxy import server as proxy, config as proxy_config

_SERVICE = "tensorflow.serving.PredictionService"


class FakeBackend:
    """A gRPC PredictionService whose Predict answers `self.answer(request)`: a PredictResponse,
    or a (grpc.StatusCode, message) error. Counts the calls it got. With `signatures` (a
    SignatureDefMap), GetModelMetadata answers it."""

    def __init__(self, answer, signatures=None):
        self.answer = answer
        self.calls = 0
        self._signatures = signatures
        self._lock = threading.Lock()
        self._server = grpc.server(concurrent.futures.ThreadPoolExecutor(8), options=[
            ("grpc.max_send_message_length", -1)])
        handler = grpc.unary_unary_rpc_method_handler(
            self._predict, request_deserializer=predict_pb2.PredictRequest.FromString,
            response_serializer=predict_pb2.PredictResponse.SerializeToString)
        handlers = {"Predict": handler}
        if signatures is not None:
            handlers["GetModelMetadata"] = grpc.unary_unary_rpc_method_handler(
                self._metadata,
                request_deserializer=get_model_metadata_pb2.GetModelMetadataRequest.FromString,
                response_serializer=get_model_metadata_pb2.GetModelMetadataResponse
                .SerializeToString)
        self._server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(_SERVICE, handlers)])
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def _predict(self, request, context):
        with self._lock:
            self.calls += 1
        result = self.answer(request)
        if isinstance(result, tuple):
            context.abort(*result)
        return result

    def _metadata(self, request, context):
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 1
        response.metadata["signature_def"].Pack(self._signatures)
        return response

    def stop(self):
        self._server.stop(0)


class InProcessProxy:
    """A ProxyServer on its own event loop thread."""

    def __init__(self, config_text: str, **options):
        settings = proxy_config.parse_proxy_settings(config_text)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def start():  # grpc.aio channels belong to the loop they are made on
            server = proxy.ProxyServer(proxy.ProxyOptions(port=0, **options), settings)
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(60)
        self.channel = self.new_channel()
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def new_channel(self) -> grpc.Channel:
        """A channel on its own TCP connection (a distinct peer for the proxy)."""
        return grpc.insecure_channel(f"127.0.0.1:{self.server.grpc_port}", options=[
            ("grpc.max_receive_message_length", -1), ("grpc.use_local_subchannel_pool", 1)])

    def close(self):
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
