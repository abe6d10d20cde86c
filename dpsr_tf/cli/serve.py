"""dpsr serve: the TF-Serving-API model server for DPSR SavedModels (dpsr_tf/serving/, docs/serving.md).

Flags carry tensorflow_model_server's names and meanings, so its command lines and config files
work unchanged:

  dpsr serve --port=8500 --rest_api_port=8501 --model_name=dpsr --model_base_path=/models/dpsr
  dpsr serve --model_config_file=models.config --model_config_file_poll_wait_seconds=60 \
      --enable_batching --batching_parameters_file=batching.config \
      --monitoring_config_file=monitoring.config

DPSR additions are marked [dpsr]: --host (binds to loopback unless told otherwise), --port_file,
--allow_reload_config_request, --model_base_path_root, --request_timeout_ms and the request
limits.
"""
import logging
import os
import sys

from absl import flags

from dpsr_tf.cli import front_end_flags
from dpsr_tf.serving import config as config_lib
from dpsr_tf.serving import capacity, heap_trim, startup, stream_limits
from dpsr_tf.serving.errors import ServingError

# tensorflow_model_server flags (same names, types and defaults).
_PORT = flags.DEFINE_integer("port", 8500, "Port to listen on for gRPC API.")
_REST_API_PORT = flags.DEFINE_integer(
    "rest_api_port", 0, "Port to listen on for HTTP/REST API. If set to zero HTTP/REST API will "
    "not be exported. [dpsr] -1 picks a free port (see --port_file).")
_REST_API_TIMEOUT = flags.DEFINE_integer("rest_api_timeout_in_ms", 30000,
                                         "Timeout for HTTP/REST API calls.")
_MODEL_NAME = flags.DEFINE_string("model_name", "default",
                                  "name of model (ignored if --model_config_file flag is set)")
_MODEL_BASE_PATH = flags.DEFINE_string(
    "model_base_path", "", "path to export (ignored if --model_config_file flag is set, "
    "otherwise required)")
_MODEL_CONFIG_FILE = flags.DEFINE_string(
    "model_config_file", "", "If non-empty, read an ascii ModelServerConfig protobuf from the "
    "supplied file name, and serve the models in that file.")
_MODEL_CONFIG_POLL = flags.DEFINE_float(
    "model_config_file_poll_wait_seconds", 0, "Interval in seconds between each poll of the "
    "filesystem for model_config_file. If unset or set to zero, poll will be done exactly once "
    "and not periodically.")
_FS_POLL = flags.DEFINE_float(
    "file_system_poll_wait_seconds", 1, "Interval in seconds between each poll of the "
    "filesystem for new model version. If set to zero poll will be exactly done once.")
_ENABLE_BATCHING = flags.DEFINE_bool("enable_batching", False, "enable batching")
_BATCHING_FILE = flags.DEFINE_string(
    "batching_parameters_file", "", "If non-empty, read an ascii BatchingParameters protobuf "
    "from the supplied file name and use the contained values instead of the defaults.")
_BATCH_THREADS_PER_KEY = flags.DEFINE_integer(
    "max_batch_threads_per_key", 0, "With --enable_batching: the most batch threads that run "
    "batches of one batch key (model version, signature, k) at once; 0: all but one of "
    "num_batch_threads, so one model's backlog of long batches never holds every thread "
    "while another's requests wait. Set it to num_batch_threads for TF Serving's scheduling.")
_MONITORING_FILE = flags.DEFINE_string(
    "monitoring_config_file", "", "If non-empty, read an ascii MonitoringConfig protobuf from "
    "the supplied file name")
_SSL_FILE = flags.DEFINE_string("ssl_config_file", "", "If non-empty, read an ascii SSLConfig "
                                "protobuf from the supplied file name and set up a secure gRPC "
                                "channel")
_ENABLE_WARMUP = flags.DEFINE_bool("enable_model_warmup", True,
                                   "Enables model warmup, which triggers lazy initializations "
                                   "(such as TF optimizations) at load time, to reduce first "
                                   "request latency.")
_WARMUP_ITERATIONS = flags.DEFINE_integer("num_request_iterations_for_warmup", 1,
                                          "Number of times a request is iterated during warmup "
                                          "replay.")
_TAGS = flags.DEFINE_string("saved_model_tags", "serve",
                            "Comma-separated set of tags corresponding to the meta graph def "
                            "to load from SavedModel.")
_INTRA_OP = flags.DEFINE_integer("tensorflow_intra_op_parallelism", 0,
                                 "Number of threads to use to parallelize the execution of an "
                                 "individual op. 0: auto-configured.")
_INTER_OP = flags.DEFINE_integer("tensorflow_inter_op_parallelism", 0,
                                 "Controls the number of operators that can be executed "
                                 "simultaneously. 0: auto-configured.")
_RUN_IN_CALLER = flags.DEFINE_boolean(
    "run_in_caller_thread", True,
    "[dpsr] Execute an unbatched run's ops on the run thread of the request (TF's "
    "RunOptions.inter_op_thread_pool = -1) rather than handing each op to the inter-op pool: "
    "no thread switch per op (docs/benchmarks.md, 'Where a call's CPU goes'). Ops of one run "
    "no longer run in parallel; runs of different requests still do. Batches keep the pool.")
_THREAD_SPINNING = flags.DEFINE_boolean(
    "tensorflow_thread_spinning", False,
    "[dpsr] Let TensorFlow's idle pool threads spin before they sleep (TF's own default). "
    "Off (the default here), they sleep at once: spinning threads take CPU from the requests "
    "when a server has more threads than cores.")
_LOAD_RETRIES = flags.DEFINE_integer("max_num_load_retries", 5,
                                     "maximum number of times it retries loading a model after "
                                     "the first failure, before giving up.")
_RETRY_INTERVAL = flags.DEFINE_integer("load_retry_interval_micros", 60 * 1000 * 1000,
                                       "The interval, in microseconds, between each servable "
                                       "load retry.")
_LABELS_UNAVAILABLE = flags.DEFINE_bool(
    "allow_version_labels_for_unavailable_models", False, "If true, allows assigning unused "
    "version labels to models that are not available yet.")

# The rest of tensorflow_model_server's flags (main.cc), so its command lines start unchanged.
_GRPC_SOCKET_PATH = flags.DEFINE_string(
    "grpc_socket_path", "", "If non-empty, listen to a UNIX socket for gRPC API on the given "
    "path. Can be either relative or absolute path.")
_FRAMED_PREDICT_SOCKET = flags.DEFINE_string(
    "framed_predict_socket", "", "[dpsr] If non-empty, also take Predict calls as frames on a "
    "UNIX socket at this path (mode 0600), for a `dpsr proxy` on the same host that lists this "
    "server as a local_replica: cheaper than gRPC for both (docs/serving.md, \"A proxy beside "
    "its shards\"). A stale socket file is replaced; a path another server listens on is "
    "refused.")
_REST_API_NUM_THREADS = flags.DEFINE_integer(
    "rest_api_num_threads", 0, "Number of threads for HTTP/REST API processing. If not set, "
    "will be auto set based on number of CPUs. [dpsr] The REST server uses one thread per "
    "connection; this is accepted and not used.")
_REST_CORS = flags.DEFINE_bool("rest_api_enable_cors_support", False,
                               "Enable CORS headers in response")
_PER_MODEL_BATCHING = flags.DEFINE_bool(
    "enable_per_model_batching_parameters", False, "Enables model specific batching params "
    "like batch sizes, timeouts, batching feature flags to be read from "
    "`batching_params.pbtxt` file present in SavedModel dir of the model.")
_NUM_LOAD_THREADS = flags.DEFINE_integer(
    "num_load_threads", 0, "TF Serving's threads that load servables (0: none, servables load "
    "one after another in the manager's loop). [dpsr] Loads are serial here.")
_NUM_UNLOAD_THREADS = flags.DEFINE_integer(
    "num_unload_threads", 0, "TF Serving's threads that unload servables (0: none, servables "
    "unload one after another in the manager's loop). [dpsr] Unloads are serial here.")
_FLUSH_FS_CACHES = flags.DEFINE_bool(
    "flush_filesystem_caches", True, "If true (the default), filesystem caches will be flushed "
    "after the initial load of all servables, and after each subsequent individual servable "
    "reload (if the number of load threads is 1). [dpsr] Nothing to flush here; accepted.")
_SESSION_PARALLELISM = flags.DEFINE_integer(
    "tensorflow_session_parallelism", 0, "Number of threads to use for running a Tensorflow "
    "session. Auto-configured by default. Note that this option is ignored if "
    "--platform_config_file is non-empty. (Deprecated: sets intra and inter op parallelism "
    "when those are 0.)")
_SESSION_CONFIG_FILE = flags.DEFINE_string(
    "tensorflow_session_config_file", "", "If non-empty, read an ascii TensorFlow Session "
    "ConfigProto protobuf from the supplied file name. Note, parts of the session config "
    "(threads, parallelism etc.) can be overridden if needed, via corresponding command-line "
    "flags.")
_USE_ALTS = flags.DEFINE_bool("use_alts_credentials", False,
                              "Use Google ALTS credentials")
_PLATFORM_CONFIG_FILE = flags.DEFINE_string(
    "platform_config_file", "", "If non-empty, read an ascii PlatformConfigMap protobuf from "
    "the supplied file name, and use that platform config instead of the Tensorflow platform.")
_GPU_MEMORY_FRACTION = flags.DEFINE_float(
    "per_process_gpu_memory_fraction", 0, "Fraction that each process occupies of the GPU "
    "memory space the value is between 0.0 and 1.0 (with 0.0 as the default) If 1.0, the "
    "server will allocate all the memory when the server starts, If 0.0, Tensorflow will "
    "automatically select a value.")
_GRPC_CHANNEL_ARGS = flags.DEFINE_string(
    "grpc_channel_arguments", "", "A comma separated list of arguments to be passed to the "
    "grpc server. (e.g. grpc.max_connection_age_ms=2000)")
_GRPC_MAX_THREADS = flags.DEFINE_integer(
    "grpc_max_threads", 0, "Max grpc server threads to handle grpc messages. [dpsr] gRPC runs "
    "on an event loop here; this caps the threads that run requests (--num_run_threads). "
    "0: not set.")
_VERSION = flags.DEFINE_bool("version", False, "Display version")
_MONITOR_REMOVE_FIELDS = flags.DEFINE_bool(
    "remove_unused_fields_from_bundle_metagraph", True, "Removes unused fields from "
    "MetaGraphDef proto message to save memory. [dpsr] Accepted; the MetaGraphDef is kept for "
    "GetModelMetadata.")
_PREFER_TFLITE = flags.DEFINE_bool("prefer_tflite_model", False,
                                   "EXPERIMENTAL; CAN BE REMOVED ANYTIME! Prefer TensorFlow "
                                   "Lite model from `model.tflite` file in SavedModel "
                                   "directory, instead of the TensorFlow model from "
                                   "`saved_model.pb` file.")
_TFLITE_POOLS = flags.DEFINE_integer("num_tflite_pools", os.cpu_count() or 1,
                                     "EXPERIMENTAL; CAN BE REMOVED ANYTIME! Number of TFLite "
                                     "interpreters in an interpreter pool of TfLiteSession. "
                                     "[dpsr] The most TFLite interpreters of one version, each "
                                     "running one call at a time; default: one per CPU.")
_TFLITE_INTERPRETERS = flags.DEFINE_integer(
    "num_tflite_interpreters_per_pool", 1, "EXPERIMENTAL; CAN BE REMOVED ANYTIME! Number of "
    "TFLite interpreters in an interpreter pool of TfLiteSession.")
_METHOD_NAME_CHECK = flags.DEFINE_bool(
    "enable_signature_method_name_check", False, "Enable method_name check for SignatureDef. "
    "Disable this if serving native TF2 regression/classification models.")
_XLA_CPU = flags.DEFINE_bool("xla_cpu_compilation_enabled", False,
                             "EXPERIMENTAL; CAN BE REMOVED ANYTIME! Enable XLA:CPU JIT "
                             "(default is disabled). With XLA:CPU JIT disabled, models "
                             "utilizing this feature will return bad Status on first "
                             "compilation request.")
_XLA_GPU = flags.DEFINE_bool("xla_gpu_compilation_enabled", False,
                             "EXPERIMENTAL; CAN BE REMOVED ANYTIME! Enable both XLA:CPU JIT and "
                             "XLA:GPU JIT (default is disabled).")
_ENABLE_PROFILER = flags.DEFINE_bool("enable_profiler", True, "Enable profiler service.")
_THREAD_POOL_FACTORY = flags.DEFINE_string(
    "thread_pool_factory_config_file", "", "If non-empty, read an ascii ThreadPoolConfig "
    "protobuf from the supplied file name.")
_MIXED_PRECISION = flags.DEFINE_string("mixed_precision", "",
                                       "specify mixed_precision mode")
_SKIP_TPU = flags.DEFINE_bool("skip_initialize_tpu", False,
                              "Whether to skip auto initializing TPU.")
_HEALTHCHECK = flags.DEFINE_bool("enable_grpc_healthcheck_service", False,
                                 "Enable the standard gRPC healthcheck service. [dpsr] Always "
                                 "on: launchers and the proxy use it.")
_TENSOR_CONTENT = flags.DEFINE_bool(
    "enable_serialization_as_tensor_content", False, "Enable serialization of predict response "
    "as tensor content. [dpsr] Outputs are always in the typed value fields; accepted.")

# Flags that cannot apply in this server, with why; a non-default value gets one line at start.
_CANNOT_APPLY = (
    (_GPU_MEMORY_FRACTION, "GPU flag; this server runs TensorFlow on the CPU"),
    (_XLA_CPU, "XLA JIT is not enabled by this server"),
    (_XLA_GPU, "XLA JIT is not enabled by this server, and it runs TensorFlow on the CPU"),
    (_TFLITE_INTERPRETERS, "each TFLite call runs on one interpreter of the version's pool "
                           "(--num_tflite_pools); a batch is not split across interpreters"),
    (_SKIP_TPU, "no TPU here"),
    (_MIXED_PRECISION, "mixed precision is a GPU/TPU setting; not applied on the CPU"),
    (_USE_ALTS, "ALTS needs Google Cloud's handshaker service; use --ssl_config_file"),
    (_PLATFORM_CONFIG_FILE, "only the tensorflow platform is served; use the session flags"),
    (_THREAD_POOL_FACTORY, "custom thread pool factories are not supported"),
    (_PER_MODEL_BATCHING, "per-model batching_params.pbtxt is not read; "
                          "--batching_parameters_file applies to every model"),
)

# [dpsr] additions.
_HOST = flags.DEFINE_string("host", "127.0.0.1", "[dpsr] Address to bind gRPC and REST to; "
                            "0.0.0.0 to listen on every interface.")
_PORT_FILE = flags.DEFINE_string("port_file", "", "[dpsr] Write {grpc_port, rest_api_port, pid} "
                                 "as JSON here once serving (use with --port=0).")
_ALLOW_RELOAD = flags.DEFINE_bool("allow_reload_config_request", True,
                                  "[dpsr] Accept ModelService.HandleReloadConfigRequest.")
_BASE_PATH_ROOT = flags.DEFINE_string("model_base_path_root", "",
                                      "[dpsr] If set, every model base_path must lie under it.")
_REQUEST_TIMEOUT = flags.DEFINE_integer("request_timeout_ms", 30000,
                                        "[dpsr] Server-side deadline of each request (the "
                                        "client's deadline applies when shorter); 0: none.")
_MAX_ROWS = flags.DEFINE_integer("max_request_rows", 0, "[dpsr] Most queries (rows, examples) "
                                 "per request; 0: no limit, as in TF Serving.")
_MAX_STRING = flags.DEFINE_integer(
    "max_string_input_bytes", 4096, "[dpsr] Longest string element of a request, in bytes (the "
    "native front end refuses a gRPC Predict with a longer one before the server reads it).")
_MAX_K = flags.DEFINE_integer("max_k", 10000, "[dpsr] Largest k a request may ask for.")
_REST_MAX_BODY = flags.DEFINE_integer(
    "rest_api_max_body_bytes", 16 << 20, "[dpsr] Largest REST request body (Content-Length or "
    "chunked); a larger one is answered HTTP 413 and its connection closed.")
_REST_INFLIGHT_BODY = flags.DEFINE_integer(
    "rest_api_max_inflight_body_bytes", 0, "[dpsr] Bytes of REST request bodies held at once "
    "by all connections, from reading to answering (a parsed JSON body takes 10-25 times its "
    "size). A body over 64 KiB waits for room up to --rest_api_timeout_in_ms, then gets "
    "HTTP 503; one body alone always fits. 0: --rest_api_max_body_bytes.")
_REST_CONN_TIMEOUT = flags.DEFINE_integer(
    "rest_api_connection_timeout_in_ms", 30000, "[dpsr] A REST connection whose reads or writes "
    "stall this long (a half-sent request, an idle keep-alive connection) is closed; 0: never.")
_MAX_ELEMENTS = flags.DEFINE_integer(
    "max_input_elements", 1 << 20, "[dpsr] Most values one input tensor may declare (the "
    "product of its shape), checked before anything is converted.")
_RUN_THREADS = flags.DEFINE_integer(
    "num_run_threads", 0, "[dpsr] Threads for requests that are not batched. 0: 4 per usable "
    "core (8 on 2 cores; docs/serving.md, \"Admission limits\").", lower_bound=0)
_MAX_QUEUED = flags.DEFINE_integer(
    "max_queued_requests", 1024, "[dpsr] Most unbatched requests waiting for a run thread, all "
    "clients together; beyond it requests get UNAVAILABLE. Clients (gRPC connections) are "
    "served in turn, and a request whose deadline passed or whose client cancelled while it "
    "waited is dropped without running.")
_MAX_QUEUED_PER_CLIENT = flags.DEFINE_integer(
    "max_queued_requests_per_client", 256, "[dpsr] Most unbatched requests of one client (gRPC "
    "connection; REST counts as one client) waiting for a run thread; beyond it that client's "
    "requests get RESOURCE_EXHAUSTED, so one client cannot fill the queue for everyone.")
_MAX_RUN_THREADS_PER_CLIENT = flags.DEFINE_integer(
    "max_run_threads_per_client", 0, "[dpsr] Most run threads one client (gRPC connection; REST "
    "counts as one) holds at once; its further unbatched requests wait while other clients' "
    "start. A session run cannot be stopped once started, so without a bound a burst that its "
    "client cancels a moment later still takes every idle thread. 0: half of "
    "--num_run_threads (rounded up), at most the machine's usable cores (one client's runs "
    "beyond them only take CPU from the others'); --num_run_threads: no bound.")
_MAX_SHORT_RUNS = flags.DEFINE_integer(
    "max_short_runs", 0, "[dpsr] Most run threads that short unbatched runs (those whose size "
    "has held a thread 2 ms or less, answer included) hold at once, all clients together; the "
    "other threads are left to longer runs, so alike short calls share the cores a few at a "
    "time while a burst of long ones cannot keep a short call waiting for a thread. 0: the "
    "usable cores + 1 (3 on 2 cores); --num_run_threads: no bound.", lower_bound=0)
_MAX_ROWS_PER_RUN = flags.DEFINE_integer(
    "max_rows_per_run", -1, "[dpsr] An unbatched request of more rows runs as several session "
    "runs of at most this many rows (e.g. 32), one after another; once its client cancels it "
    "(a hedged call's loser) or its deadline passes it stops before the next, so an abandoned "
    "large request costs one chunk of work, not its whole run. Rows must be independent, as "
    "--enable_batching assumes. 0: one session run per request (TF Serving's behaviour); -1: "
    "32 for servables written by `dpsr export` (rows independent by construction), one run "
    "per request for any other model.", lower_bound=-1)
_MAX_UNSENT = flags.DEFINE_integer(
    "max_unsent_response_bytes", 8 << 20, "[dpsr] Bytes of answers computed but not yet read "
    "by their clients (HTTP/2 flow control), all clients together; while over it, clients "
    "holding more than 64 KiB of them are held back and their new calls get RESOURCE_EXHAUSTED. "
    "A held answer costs the server ~6x its serialized bytes. 0: no limit.")
_MAX_UNSENT_PER_CLIENT = flags.DEFINE_integer(
    "max_unsent_response_bytes_per_client", 4 << 20, "[dpsr] Bytes of answers one client (gRPC "
    "connection) has not read yet; while it holds more, its queued requests wait and other "
    "clients' run, so a client that does not read gets no more answers computed. 0: no limit.")
_HEAP_TRIM = flags.DEFINE_float(
    "heap_trim_interval_seconds", heap_trim.DEFAULT_INTERVAL_SECONDS, "[dpsr] How often the "
    "server checks its resident size and its heap's free bytes and, when either grew "
    f"{heap_trim.DEFAULT_MIN_GROWTH_BYTES >> 20} MiB since the last trim, returns freed heap "
    "pages to the system (glibc malloc_trim). While it runs, buffers under "
    f"{startup.HEAP_BUFFER_BYTES >> 20} MiB come from the heap, for the next to reuse. 0: "
    f"never, and buffers of {startup.LARGE_BUFFER_BYTES >> 20} MiB or more get pages of their "
    "own.", lower_bound=0.0)
_MAX_STREAMS = flags.DEFINE_integer(
    "max_streams_per_connection", stream_limits.DERIVED,
    "[dpsr] Calls one gRPC connection may have open at once (HTTP/2 "
    "SETTINGS_MAX_CONCURRENT_STREAMS); a client's gRPC library holds its further calls until "
    "one ends, so one client's flood waits at its source instead of in front of other "
    "clients. -1: 64 per usable core (128 on 2 cores), 256 per core with the native front "
    "end, whose gate refuses a connection's excess at once (512 on 2 cores); 0: no limit. "
    "--grpc_channel_arguments=grpc.max_concurrent_streams=N overrides "
    "(gRPC's overload protection is turned off under either, unless named there too).",
    lower_bound=-1)


def _fail(message: str):
    print(f"dpsr serve: {message}", file=sys.stderr)
    sys.exit(2)


def parse_channel_arguments(text: str):
    """--grpc_channel_arguments "a=1,b=x" -> (("a", 1), ("b", "x")); ints stay ints."""
    args = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--grpc_channel_arguments: {item!r} is not key=value")
        value = value.strip()
        try:
            args.append((key.strip(), int(value)))
        except ValueError:
            args.append((key.strip(), value))
    return tuple(args)


def _notices():
    """One line per tensorflow_model_server flag given that cannot apply here."""
    for flag, why in _CANNOT_APPLY:
        if flags.FLAGS[flag.name].present:
            logging.warning("--%s=%s is accepted but not applied: %s", flag.name, flag.value,
                            why)


def options_from_flags():
    """(ServerOptions, ModelServerConfig) from the flags; exits with a message on bad input."""
    # TensorFlow loads with these, after main's prefer_eigen_kernels (serve start-up)
    from dpsr_tf.serving.model_server.lifecycle.manager import ManagerOptions
    from dpsr_tf.serving.model_server.server import ServerOptions
    from dpsr_tf.serving.model_server.api.predict import RequestLimits
    from dpsr_tf.serving.model_server.lifecycle.servable import SessionOptions
    from dpsr_tf.serving.model_server.api.server_core import CoreOptions

    try:
        if _MODEL_CONFIG_FILE.value:
            server_config = config_lib.read_text_proto(
                _MODEL_CONFIG_FILE.value, config_lib.ModelServerConfig, "--model_config_file")
        elif _MODEL_BASE_PATH.value:
            server_config = config_lib.single_model_config(
                _MODEL_NAME.value, os.path.abspath(_MODEL_BASE_PATH.value))
        else:
            _fail("give --model_base_path (with --model_name) or --model_config_file")
        config_lib.validate_model_server_config(server_config, _BASE_PATH_ROOT.value)
        batching = None
        if _ENABLE_BATCHING.value:
            batching = config_lib.read_batching_options(_BATCHING_FILE.value,
                                                        _BATCH_THREADS_PER_KEY.value)
        elif _BATCHING_FILE.value:
            _fail("--batching_parameters_file needs --enable_batching")
        monitoring = config_lib.read_monitoring_options(_MONITORING_FILE.value)
        ssl = config_lib.read_ssl_options(_SSL_FILE.value)
    except ServingError as e:
        _fail(e.message)
    for flag in (_MAX_STRING, _MAX_K, _MAX_ELEMENTS, _REST_MAX_BODY, _MAX_QUEUED,
                 _MAX_QUEUED_PER_CLIENT):
        if flag.value < 1:
            _fail(f"--{flag.name} is {flag.value}; it must be >= 1")
    for flag in (_MAX_UNSENT, _MAX_UNSENT_PER_CLIENT):
        if flag.value < 0:
            _fail(f"--{flag.name} is {flag.value}; it must be >= 0 (0: no limit)")
    if _MAX_RUN_THREADS_PER_CLIENT.value < 0:
        _fail(f"--max_run_threads_per_client is {_MAX_RUN_THREADS_PER_CLIENT.value}; it must be "
              ">= 0 (0: half of --num_run_threads, at most the usable cores)")
    if _MAX_ROWS.value < 0:
        _fail(f"--max_request_rows is {_MAX_ROWS.value}; it must be >= 0 (0: no limit)")
    if _REST_INFLIGHT_BODY.value < 0:
        _fail(f"--rest_api_max_inflight_body_bytes is {_REST_INFLIGHT_BODY.value}; it must be "
              ">= 0 (0: as large as --rest_api_max_body_bytes)")
    session_config = None
    if _SESSION_CONFIG_FILE.value:
        # TensorFlow only after main's prefer_eigen_kernels (serve start-up)
        from tensorflow.core.protobuf import config_pb2
        try:
            session_config = config_lib.read_text_proto(
                _SESSION_CONFIG_FILE.value, config_pb2.ConfigProto,
                "--tensorflow_session_config_file").SerializeToString()
        except ServingError as e:
            _fail(e.message)
    intra, inter = _INTRA_OP.value, _INTER_OP.value
    if _SESSION_PARALLELISM.value > 0:  # TF Serving's deprecated flag sets both
        intra, inter = intra or _SESSION_PARALLELISM.value, inter or _SESSION_PARALLELISM.value
    run_threads = _RUN_THREADS.value or capacity.run_threads()
    if _GRPC_MAX_THREADS.value > 0:
        run_threads = min(run_threads, _GRPC_MAX_THREADS.value)
    channel_args = parse_channel_arguments(_GRPC_CHANNEL_ARGS.value)
    _notices()
    native_front_end = _native_front_end(ssl)
    core = CoreOptions(
        session=SessionOptions(
            saved_model_tags=tuple(t.strip() for t in _TAGS.value.split(",") if t.strip()),
            intra_op_parallelism=intra, inter_op_parallelism=inter,
            session_config=session_config,
            prefer_tflite_model=_PREFER_TFLITE.value,
            num_tflite_interpreters=max(1, _TFLITE_POOLS.value),
            session_runners=run_threads + (batching.num_batch_threads if batching else 0),
            run_in_caller_thread=_RUN_IN_CALLER.value,
            thread_spinning=_THREAD_SPINNING.value),
        manager=ManagerOptions(
            file_system_poll_wait_seconds=_FS_POLL.value,
            max_num_load_retries=_LOAD_RETRIES.value,
            load_retry_interval_micros=_RETRY_INTERVAL.value,
            allow_version_labels_for_unavailable_models=_LABELS_UNAVAILABLE.value,
            base_path_root=_BASE_PATH_ROOT.value),
        batching=batching,
        limits=RequestLimits(max_rows=_MAX_ROWS.value, max_string_bytes=_MAX_STRING.value,
                             max_k=_MAX_K.value, max_elements=_MAX_ELEMENTS.value),
        enable_model_warmup=_ENABLE_WARMUP.value,
        num_request_iterations_for_warmup=_WARMUP_ITERATIONS.value,
        request_timeout_seconds=_REQUEST_TIMEOUT.value / 1000.0,
        num_run_threads=run_threads,
        max_queued_requests=_MAX_QUEUED.value,
        max_queued_requests_per_client=_MAX_QUEUED_PER_CLIENT.value,
        max_run_threads_per_client=(_MAX_RUN_THREADS_PER_CLIENT.value
                                    or capacity.running_per_client(run_threads)),
        max_short_runs=_MAX_SHORT_RUNS.value or capacity.short_runs(),
        # The native front end refuses a standing queue before its calls reach the run queue.
        queue_target_seconds=(0.0 if native_front_end else
                              front_end_flags.QUEUE_TARGET_MS.value / 1000.0),
        queue_interval_seconds=front_end_flags.QUEUE_INTERVAL_MS.value / 1000.0,
        max_unsent_response_bytes=_MAX_UNSENT.value,
        max_rows_per_run=_MAX_ROWS_PER_RUN.value,
        max_unsent_response_bytes_per_client=_MAX_UNSENT_PER_CLIENT.value,
        enable_signature_method_name_check=_METHOD_NAME_CHECK.value)
    options = ServerOptions(
        host=_HOST.value, port=_PORT.value, rest_api_port=_REST_API_PORT.value,
        rest_api_timeout_seconds=_REST_API_TIMEOUT.value / 1000.0,
        rest_api_max_body_bytes=_REST_MAX_BODY.value,
        rest_api_max_inflight_body_bytes=_REST_INFLIGHT_BODY.value,
        rest_api_connection_timeout_seconds=_REST_CONN_TIMEOUT.value / 1000.0,
        model_config_file=_MODEL_CONFIG_FILE.value,
        model_config_file_poll_wait_seconds=_MODEL_CONFIG_POLL.value,
        monitoring=monitoring, ssl=ssl,
        allow_reload_config_request=_ALLOW_RELOAD.value,
        port_file=_PORT_FILE.value, core=core,
        grpc_socket_path=_GRPC_SOCKET_PATH.value, grpc_channel_arguments=channel_args,
        framed_predict_socket=_FRAMED_PREDICT_SOCKET.value,
        enable_profiler=_ENABLE_PROFILER.value,
        heap_trim_interval_seconds=_HEAP_TRIM.value,
        max_streams_per_connection=stream_limits.resolve(
            _MAX_STREAMS.value, native_front_end=native_front_end is not None),
        native_front_end=native_front_end)
    return options, server_config


def _native_front_end(ssl):
    try:
        return front_end_flags.front_end_options(
            ssl, hold_back_unread_bytes=_MAX_UNSENT_PER_CLIENT.value,
            hold_back_total_unread_bytes=_MAX_UNSENT.value,
            max_string_input_bytes=_MAX_STRING.value)
    except ValueError as e:
        _fail(str(e))


def main(argv):
    startup.prefer_eigen_kernels()  # before TensorFlow loads
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; every setting is a --flag")
    logging.getLogger().setLevel(logging.INFO)
    if _VERSION.value:
        import tensorflow as tf  # after prefer_eigen_kernels, as when serving
        print(f"TensorFlow ModelServer: dpsr serve (TF Serving API 2.15)\n"
              f"TensorFlow Library: {tf.__version__}")
        return
    options, server_config = options_from_flags()
    # TensorFlow loads here, after prefer_eigen_kernels has set its environment
    from dpsr_tf.serving.model_server.server import run_model_server
    try:
        run_model_server(options, server_config)
    except Exception as e:  # pylint: disable=broad-except
        if isinstance(e, ServingError):
            _fail(f"cannot start: {e}")
        if isinstance(e, OSError):
            _fail(f"cannot start: {e}")
        raise
