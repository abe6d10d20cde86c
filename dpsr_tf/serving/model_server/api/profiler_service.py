"""tensorflow.ProfilerService on the model server's own gRPC port, as TF Serving registers it.

TensorFlow's own profiler server (`tf.profiler.experimental.server.start(port)`) cannot share
this port: it is a second C++ gRPC server inside TensorFlow, with its own listener bound to
every interface (`[::]:port`), while this server's services run on grpcio's asyncio server.
So the service is implemented here, with TensorFlow's in-process profiler session doing the
tracing, and behaves as TensorFlow's ProfilerServiceImpl (tsl/profiler/rpc/):

  Profile:   traces this process for `opts.duration_ms` (or until Terminate names the session,
             or the client cancels), then writes the XSpace to
             <repository_root>/<session_id>/<host_name>.xplane.pb (':' -> '_') and answers
             `empty_trace` = whether any event was recorded (never, as the capture is traced
             itself: a "ProfilerService::Profile" span). `tf.profiler.experimental.client
             .trace("grpc://host:port", logdir, duration_ms)` and TensorBoard's capture button
             use it; the file lands where the client asked, on the server's file system.
  Terminate: ends the named session's Profile early.
  Monitor:   UNIMPLEMENTED (as in TensorFlow).

One profile runs at a time (TensorFlow has one profiler per process): a second concurrent
Profile is answered FAILED_PRECONDITION.
"""
import asyncio
import glob
import logging
import os
import shutil
import tempfile
import threading

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from tensorflow.python.profiler import trace
from tensorflow.python.profiler.internal import _pywrap_profiler
from tensorflow.tsl.profiler.protobuf import profiler_options_pb2, xplane_pb2

_LOG = logging.getLogger("serving.profiler")
SERVICE_NAME = "tensorflow.ProfilerService"
# Longest profile accepted: the profiler holds every event of the process in memory.
MAX_DURATION_MS = 10 * 60 * 1000
_F = descriptor_pb2.FieldDescriptorProto


def _message_classes():
    """ProfileRequest/ProfileResponse/TerminateRequest/TerminateResponse, field for field as
    tsl/profiler/protobuf/profiler_service.proto (the wheel ships no Python module for it), in
    a private pool beside TensorFlow's ProfileOptions."""
    pool = descriptor_pool.DescriptorPool()
    options = descriptor_pb2.FileDescriptorProto()
    profiler_options_pb2.DESCRIPTOR.CopyToProto(options)
    pool.Add(options)
    fd = descriptor_pb2.FileDescriptorProto(name="dpsr/serving/profiler_service.proto",
                                            package="tensorflow", syntax="proto3",
                                            dependency=[options.name])
    one, many = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    messages = {  # name -> [(field, number, type, label, message type)]
        "ProfileRequest": [("duration_ms", 1, _F.TYPE_UINT64, one, ""),
                           ("max_events", 2, _F.TYPE_UINT64, one, ""),
                           ("tools", 3, _F.TYPE_STRING, many, ""),
                           ("opts", 4, _F.TYPE_MESSAGE, one, ".tensorflow.ProfileOptions"),
                           ("repository_root", 5, _F.TYPE_STRING, one, ""),
                           ("session_id", 6, _F.TYPE_STRING, one, ""),
                           ("host_name", 7, _F.TYPE_STRING, one, "")],
        "ProfileToolData": [("name", 1, _F.TYPE_STRING, one, ""),
                            ("data", 2, _F.TYPE_BYTES, one, "")],
        "ProfileResponse": [("tool_data", 6, _F.TYPE_MESSAGE, many,
                             ".tensorflow.ProfileToolData"),
                            ("empty_trace", 7, _F.TYPE_BOOL, one, "")],
        "TerminateRequest": [("session_id", 1, _F.TYPE_STRING, one, "")],
        "TerminateResponse": [],
    }
    for name, fields in messages.items():
        msg = fd.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
    pool.Add(fd)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
            for name in messages}


def _path_component(value: str, what: str) -> str:
    """A session id or host name becomes one file-name component, never a path."""
    if not value or value in (".", "..") or "/" in value or "\0" in value:
        raise ValueError(f"{what} {value!r} must be one non-empty file name component "
                         "(no '/', not '.' or '..')")
    return value


class ProfilerService:
    """The three RPCs over TensorFlow's in-process profiler; see the module docstring."""

    def __init__(self):
        self._messages = _message_classes()
        self._busy = threading.Lock()  # one profile at a time (one profiler per process)
        self._active = None        # session id of the profile in progress
        self._terminate_active = False

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to add to the model server's grpc.aio server."""
        def unary(fn):
            return grpc.unary_unary_rpc_method_handler(fn)  # raw bytes in and out
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Profile": unary(self._profile),
            "Terminate": unary(self._terminate),
            "Monitor": unary(self._monitor),
        })

    def _parse(self, name, data):
        try:
            return self._messages[name].FromString(data)
        except Exception as e:  # pylint: disable=broad-except
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"request is not a valid tensorflow.{name}: {e}") from e

    async def _terminate(self, data, context):
        try:
            request = self._parse("TerminateRequest", data)
        except _Abort as e:
            await context.abort(e.code, e.message)
        if self._active is not None and request.session_id == self._active:
            self._terminate_active = True
        return self._messages["TerminateResponse"]().SerializeToString()

    async def _monitor(self, data, context):
        del data
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "unimplemented.")

    async def _profile(self, data, context):
        try:
            request = self._parse("ProfileRequest", data)
            out_path = _output_path(request)
        except _Abort as e:
            await context.abort(e.code, e.message)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        duration_ms = request.opts.duration_ms or request.duration_ms
        if duration_ms > MAX_DURATION_MS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"duration_ms is {duration_ms}; the most is {MAX_DURATION_MS}")
        if not self._busy.acquire(blocking=False):  # pylint: disable=consider-using-with
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "another profile is being captured; one runs at a time")
        self._active, self._terminate_active = request.session_id, False
        loop = asyncio.get_running_loop()
        work_dir = None
        try:
            work_dir = tempfile.mkdtemp(prefix="dpsr-profile-")
            session = await loop.run_in_executor(None, _start_session, work_dir, request.opts)
            try:
                # The capture is work of this process too: one span as long as it, so a
                # profile of an idle server is not empty (TF Serving's idle traces hold events).
                with trace.Trace("ProfilerService::Profile", session_id=request.session_id):
                    waited = 0
                    while waited < duration_ms and not self._terminate_active:
                        step = min(50, duration_ms - waited)
                        await asyncio.sleep(step / 1000)
                        waited += step
            finally:
                # Cancelled clients too: the session is always ended (one per process).
                xspace = await loop.run_in_executor(None, _finish_session, session, work_dir)
            empty = await loop.run_in_executor(None, _save, xspace, out_path)
        except OSError as e:
            await context.abort(grpc.StatusCode.INTERNAL, f"cannot write the profile: {e}")
        except Exception as e:  # pylint: disable=broad-except  (cancellation passes through)
            _LOG.exception("profile failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        finally:
            if work_dir is not None:
                shutil.rmtree(work_dir, ignore_errors=True)
            self._active = None
            self._busy.release()
        _LOG.info("Profile of %d ms written to %s%s", duration_ms, out_path,
                  " (no events)" if empty else "")
        response = self._messages["ProfileResponse"](empty_trace=empty)
        return response.SerializeToString()


class _Abort(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


def _output_path(request) -> str:
    """<repository_root>/<session_id>/<host_name>.xplane.pb, ':' -> '_' in the file name (as
    TensorFlow's SaveXSpace)."""
    if not os.path.isabs(request.repository_root) or "\0" in request.repository_root:
        raise ValueError(f"repository_root {request.repository_root!r} must be an absolute "
                         "path on the server")
    session = _path_component(request.session_id, "session_id")
    host = _path_component(request.host_name, "host_name")
    return os.path.join(request.repository_root, session,
                        f"{host}.xplane.pb".replace(":", "_"))


def _start_session(work_dir: str, opts):
    session = _pywrap_profiler.ProfilerSession()
    # TensorFlow's defaults (ProfileOptions: 0 means the default level) where not given.
    session.start(work_dir, {"host_tracer_level": opts.host_tracer_level or 2,
                             "python_tracer_level": opts.python_tracer_level,
                             "device_tracer_level": opts.device_tracer_level or 1})
    return session


def _finish_session(session, work_dir: str) -> bytes:
    """Ends the session; the serialized XSpace it recorded."""
    session.export_to_tb()  # writes work_dir/plugins/profile/<run>/<host>.xplane.pb
    (path,) = glob.glob(os.path.join(work_dir, "plugins", "profile", "*", "*.xplane.pb"))
    with open(path, "rb") as f:
        return f.read()


def _save(xspace: bytes, out_path: str) -> bool:
    """Writes the XSpace where the client asked; whether it holds no event."""
    space = xplane_pb2.XSpace.FromString(xspace)
    empty = not any(line.events for plane in space.planes for line in plane.lines)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(xspace)
    os.replace(tmp, out_path)
    return empty
