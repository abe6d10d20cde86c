"""Config files of the model server, in TF Serving's text-proto formats, and their checks.

  --model_config_file        ModelServerConfig   (tensorflow_serving/config/model_server_config.proto)
  --batching_parameters_file BatchingParameters  (servables/tensorflow/session_bundle_config.proto)
  --monitoring_config_file   MonitoringConfig    (config/monitoring_config.proto)
  --ssl_config_file          SSLConfig           (config/ssl_config.proto)

Every parse error names the file, line and column; every semantic error names the model and
field and says what to do. Errors are ServingError(INVALID_ARGUMENT) so HandleReloadConfigRequest
can return them to the caller unchanged.
"""
import dataclasses
import os
import ssl
import tempfile
from typing import Optional, Tuple

import grpc
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from dpsr_tf.serving import protos
from dpsr_tf.serving.errors import ServingError

ModelServerConfig = model_server_config_pb2.ModelServerConfig


def read_text_proto(path: str, message_class, what: str):
    """Parses a text-proto file into a new `message_class`.

    Args:
      path: the file.
      message_class: the generated message class.
      what: the flag or role of the file, for messages ("--model_config_file").

    Raises:
      ServingError(INVALID_ARGUMENT): unreadable file or a parse error (with path:line:column).
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{what}: cannot read {path}: {e.strerror}") from e
    return parse_text_proto(text, message_class, f"{what} {path}")


def parse_text_proto(text: str, message_class, where: str):
    """Parses text-proto `text`; `where` prefixes the error message (file or request)."""
    try:
        return text_format.Parse(text, message_class())
    except text_format.ParseError as e:
        line, column = e.GetLine(), e.GetColumn()
        pos = f":{line}:{column}" if line else ""
        detail = str(e).split(" : ", 1)[-1]
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Error parsing text-format {message_class.DESCRIPTOR.full_name}: {where}{pos}: "
            f"{detail} (Invalid protobuf file)") from e


# ----------------------------------------------------------------------------- models

def single_model_config(model_name: str, model_base_path: str) -> "ModelServerConfig":
    """The config tensorflow_model_server builds from --model_name and --model_base_path."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = model_base_path
    model.model_platform = "tensorflow"
    return config


def validate_model_server_config(config, base_path_root: str = "") -> None:
    """Checks a ModelServerConfig before it is applied (nothing is changed on error).

    Args:
      config: ModelServerConfig.
      base_path_root: when non-empty, every base_path must resolve inside this directory.

    Raises:
      ServingError(INVALID_ARGUMENT) or (PERMISSION_DENIED for a path outside the root).
    """
    bad = lambda msg: ServingError(grpc.StatusCode.INVALID_ARGUMENT, msg)  # noqa: E731
    if config.WhichOneof("config") == "custom_model_config":
        raise bad("custom_model_config is not supported; use model_config_list")
    names = set()
    for i, model in enumerate(config.model_config_list.config):
        where = f"model_config_list.config[{i}]"
        if not model.name:
            raise bad(f"{where}: name is empty; give each model a name")
        _check_no_control_characters(model.name, "name", where)
        if model.name in names:
            raise bad(f"{where}: model name '{model.name}' appears twice; names must be unique")
        names.add(model.name)
        where = f"model '{model.name}'"
        if not model.base_path:
            raise bad(f"{where}: base_path is empty; set it to the directory holding the "
                      "numbered version directories")
        _check_no_control_characters(model.base_path, "base_path", where)
        if model.model_platform not in ("", "tensorflow"):
            raise bad(f"{where}: model_platform '{model.model_platform}' is not supported; "
                      "this server serves 'tensorflow' SavedModels")
        if not os.path.isabs(model.base_path) and "://" not in model.base_path:
            # As TF Serving (server_core_test RelativePathFails): a config file's meaning must
            # not depend on the server's working directory.
            raise bad(f"{where}: Expected model {model.name} to have an absolute path or URI; "
                      f"got base_path '{model.base_path}'")
        check_base_path(model.base_path, base_path_root, where)
        policy = model.model_version_policy
        if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 0:
            raise bad(f"{where}: model_version_policy.latest.num_versions is "
                      f"{policy.latest.num_versions}; use a positive number (0 means 1)")
        if policy.WhichOneof("policy_choice") == "specific":
            if not policy.specific.versions:
                raise bad(f"{where}: model_version_policy.specific lists no versions")
            if any(v < 0 for v in policy.specific.versions):
                raise bad(f"{where}: model_version_policy.specific has a negative version "
                          f"{list(policy.specific.versions)}")
        for label, version in model.version_labels.items():
            # TF Serving takes any label (its tests use "nice try"); a "/" could not be named
            # in a REST path, and control characters would garble logs.
            if not label or "/" in label or not label.isprintable():
                raise bad(f"{where}: version label {label!r} must be non-empty printable text "
                          "without '/'")
            if version < 0:
                raise bad(f"{where}: version label '{label}' points to negative version "
                          f"{version}")


def _check_no_control_characters(value: str, field: str, where: str) -> None:
    """Refuses a NUL or other control character (C0, DEL, C1) in a name or path: the OS and
    TensorFlow cannot take NUL in a path, and the others would garble logs and metrics."""
    for at, char in enumerate(value):
        if ord(char) < 0x20 or 0x7f <= ord(char) < 0xa0:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{where}: {field} {value[:200]!r} has the control character {char!r} at "
                f"position {at}; names and paths must be printable text")


def check_base_path(base_path: str, base_path_root: str, where: str) -> None:
    """Raises PERMISSION_DENIED when base_path resolves outside base_path_root (if set)."""
    if not base_path_root:
        return
    root = os.path.realpath(base_path_root)
    path = os.path.realpath(base_path)
    if os.path.commonpath([root, path]) != root:
        raise ServingError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{where}: base_path {base_path} is outside the allowed root {base_path_root} "
            "(--model_base_path_root); move the model under the root or change the flag")


def aspired_versions(policy, versions_on_disk) -> Tuple[int, ...]:
    """The versions a FileSystemStoragePathSource version policy selects.

    Args:
      policy: ServableVersionPolicy (latest {num_versions}, all {}, specific {versions}).
      versions_on_disk: iterable of int version numbers found under the base path.

    Returns:
      Sorted tuple of versions to serve. Default policy: latest 1.
    """
    on_disk = sorted(set(versions_on_disk))
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return tuple(on_disk)
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return tuple(v for v in on_disk if v in wanted)
    n = max(1, policy.latest.num_versions) if choice == "latest" else 1
    return tuple(on_disk[-n:]) if on_disk else ()


# ----------------------------------------------------------------------------- batching

@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """Server-side batching (BatchingParameters with TF Serving's defaults).

    Attributes:
      max_batch_size: most rows in one session run.
      batch_timeout_micros: how long the oldest request may wait for a fuller batch; 0 runs a
        batch as soon as a batch thread is free (requests that arrive meanwhile join it).
      max_enqueued_batches: queue bound, in batches; beyond it requests get UNAVAILABLE.
      num_batch_threads: threads running batches.
      allowed_batch_sizes: if set, batches are padded up to the next allowed size.
      pad_variable_length_inputs: accepted for compatibility (inputs here have fixed rank).
      thread_pool_name: name of the batch threads.
      max_threads_per_key: the most batch threads that run batches of one batch key (model
        version, signature, scalar inputs such as k) at once; 0: all but one of
        num_batch_threads (at least one), so one key's backlog of long batches never holds
        every thread while another model's requests wait. num_batch_threads: TF Serving's
        scheduling. Not a BatchingParameters field (--max_batch_threads_per_key).
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = max(1, os.cpu_count() or 1)
    allowed_batch_sizes: Tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    thread_pool_name: str = "model_server_batch_threads"
    max_threads_per_key: int = 0

    def __post_init__(self):
        bad = lambda msg: ServingError(grpc.StatusCode.INVALID_ARGUMENT, msg)  # noqa: E731
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise bad(f"batching parameter {name} is {getattr(self, name)}; it must be >= 1")
        if self.max_threads_per_key < 0:
            raise bad(f"max_threads_per_key is {self.max_threads_per_key}; it must be >= 0 "
                      "(0: all batch threads but one)")
        if self.batch_timeout_micros < 0:
            raise bad(f"batching parameter batch_timeout_micros is {self.batch_timeout_micros};"
                      " it must be >= 0")
        sizes = list(self.allowed_batch_sizes)
        if sizes:
            if sizes != sorted(set(sizes)) or sizes[0] < 1:
                raise bad(f"allowed_batch_sizes {sizes} must be positive and increasing")
            if sizes[-1] != self.max_batch_size:
                raise bad(f"the last allowed_batch_sizes entry ({sizes[-1]}) must equal "
                          f"max_batch_size ({self.max_batch_size})")


def batching_options_from_proto(params) -> BatchingOptions:
    """BatchingOptions from a BatchingParameters message (unset fields keep the defaults)."""
    kwargs = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                 "num_batch_threads", "thread_pool_name"):
        if params.HasField(name):
            kwargs[name] = getattr(params, name).value
    if params.HasField("max_execution_batch_size") and "max_batch_size" not in kwargs:
        kwargs["max_batch_size"] = params.max_execution_batch_size.value
    kwargs["allowed_batch_sizes"] = tuple(params.allowed_batch_sizes)
    kwargs["pad_variable_length_inputs"] = params.pad_variable_length_inputs
    return BatchingOptions(**kwargs)


def read_batching_options(path: Optional[str], max_threads_per_key: int = 0) -> BatchingOptions:
    """BatchingOptions from --batching_parameters_file (defaults when path is empty) and
    --max_batch_threads_per_key."""
    try:
        if not path:
            return BatchingOptions(max_threads_per_key=max_threads_per_key)
        params = read_text_proto(path, protos.BatchingParameters, "--batching_parameters_file")
        return dataclasses.replace(batching_options_from_proto(params),
                                   max_threads_per_key=max_threads_per_key)
    except ServingError as e:
        raise ServingError(e.code, f"--batching_parameters_file {path}: {e.message}") from e


# ----------------------------------------------------------------------------- monitoring, TLS

@dataclasses.dataclass(frozen=True)
class MonitoringOptions:
    """Prometheus exposition on the REST port (MonitoringConfig.prometheus_config)."""

    prometheus_enabled: bool = False
    prometheus_path: str = "/monitoring/prometheus/metrics"


def read_monitoring_options(path: Optional[str]) -> MonitoringOptions:
    if not path:
        return MonitoringOptions()
    cfg = read_text_proto(path, protos.MonitoringConfig, "--monitoring_config_file")
    prom = cfg.prometheus_config
    metrics_path = prom.path or MonitoringOptions.prometheus_path
    if not metrics_path.startswith("/"):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"--monitoring_config_file {path}: prometheus_config.path "
                           f"'{prom.path}' must start with '/'")
    return MonitoringOptions(prometheus_enabled=prom.enable, prometheus_path=metrics_path)


@dataclasses.dataclass(frozen=True)
class SslOptions:
    """TLS for the gRPC port (SSLConfig: PEM contents, not paths, as in TF Serving)."""

    server_key: bytes
    server_cert: bytes
    custom_ca: Optional[bytes] = None
    client_verify: bool = False


def read_ssl_options(path: Optional[str]) -> Optional[SslOptions]:
    if not path:
        return None
    cfg = read_text_proto(path, protos.SSLConfig, "--ssl_config_file")
    if not cfg.server_key or not cfg.server_cert:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"--ssl_config_file {path}: server_key and server_cert must hold the "
                           "PEM text of the key and certificate")
    if cfg.client_verify and not cfg.custom_ca:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"--ssl_config_file {path}: client_verify needs custom_ca (the PEM of "
                           "the CA that signs client certificates)")
    _check_pem(path, cfg.server_key, cfg.server_cert, cfg.custom_ca)
    return SslOptions(server_key=cfg.server_key.encode(), server_cert=cfg.server_cert.encode(),
                      custom_ca=cfg.custom_ca.encode() if cfg.custom_ca else None,
                      client_verify=cfg.client_verify)


def _check_pem(path: str, key: str, cert: str, custom_ca: str) -> None:
    """Loads the key, certificate and CA with Python's ssl module so that a bad one is reported
    as such (gRPC only says the port could not be added). The PEM goes through a private
    temporary directory that is removed at once."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="dpsr-pem-") as tmp:
        os.chmod(tmp, 0o700)
        cert_file, key_file = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for file, text in ((cert_file, cert), (key_file, key)):
            with open(os.open(file, os.O_WRONLY | os.O_CREAT, 0o600), "w",
                      encoding="utf-8") as f:
                f.write(text)
        try:
            context.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, ValueError) as e:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"--ssl_config_file {path}: server_cert and server_key are not a PEM "
                f"certificate and its matching private key ({e}); put the PEM text itself in "
                "the strings, newlines escaped as \\n") from None
    if custom_ca:
        try:
            context.load_verify_locations(cadata=custom_ca)
        except (ssl.SSLError, ValueError) as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"--ssl_config_file {path}: custom_ca is not a PEM certificate "
                               f"({e})") from None
