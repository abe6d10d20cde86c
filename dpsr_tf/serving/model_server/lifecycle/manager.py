"""The version manager: which versions of which models are loaded, and swapping them safely.

For each configured model it watches `base_path` (numbered version directories, as TF Serving's
FileSystemStoragePathSource; version_dirs.py reads them), applies the version policy (latest N,
all, specific), and:

  * loads and warms up a new aspired version while the old ones keep serving;
  * publishes it (requests for "latest" now resolve to it), then unloads versions that are no
    longer aspired: new requests stop resolving to them at once, in-flight requests holding a
    reference finish, then the session is closed. No request fails during a swap;
  * never unloads a serving version while no aspired version is available (availability
    preserving): a broken new version shows as END with its error in GetModelStatus, and the
    healthy one keeps serving. A failed version is retried `max_num_load_retries` times, and
    again whenever its files change;
  * resolves version labels (`version_labels` in the config) at request time.
"""
import dataclasses
import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import grpc
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from dpsr_tf.serving import config as config_lib
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server.lifecycle import version_dirs

_LOG = logging.getLogger("serving.manager")
State = get_model_status_pb2.ModelVersionStatus.State
_MAX_ENDED_RECORDS = 16  # END records kept per model for GetModelStatus


@dataclasses.dataclass(frozen=True)
class ManagerOptions:
    """Version manager settings (tensorflow_model_server flags of the same names).

    Attributes:
      file_system_poll_wait_seconds: seconds between base-path scans; 0 scans once at start.
      max_num_load_retries: retries of a failed load (then it waits for its files to change).
      load_retry_interval_micros: wait between retries.
      allow_version_labels_for_unavailable_models: allow labels on versions not yet loaded.
      base_path_root: when set, model base paths must resolve inside it.
      unload_drain_timeout_seconds: longest wait for in-flight requests before closing an
        unloaded version anyway.
    """

    file_system_poll_wait_seconds: float = 1.0
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    allow_version_labels_for_unavailable_models: bool = False
    base_path_root: str = ""
    unload_drain_timeout_seconds: float = 60.0


class _Version:
    """One version of one model and its life cycle."""

    def __init__(self, version: int, path: str):
        self.version = version
        self.path = path
        self.state = State.START
        self.error: Optional[ServingError] = None
        self.servable = None
        self.refs = 0
        self.attempts = 0
        self.next_retry = 0.0
        self.fingerprint = None

    def status_proto(self):
        status = get_model_status_pb2.ModelVersionStatus(version=self.version, state=self.state)
        status.status.SetInParent()  # error_code OK is shown explicitly, as TF Serving does
        if self.error is not None:
            status.status.error_code = self.error.code.value[0]
            status.status.error_message = self.error.message
        return status


class _Model:
    def __init__(self, model_config):
        self.config = model_config
        self.versions: Dict[int, _Version] = {}
        self.labels: Dict[str, int] = {}
        self.removed = False
        self.warned_missing = False
        self.ignored_names: set = set()  # odd directory names already logged
        self.poll_error = ""                # last error of a scan, logged once


# TF Serving's message for a label no version carries (server_core.cc); the proxy keys its
# failover to other replicas on this prefix, so it must stay exactly this.
UNKNOWN_LABEL_PREFIX = "Unrecognized servable version label: "


def unknown_label_error(label: str) -> ServingError:
    """INVALID_ARGUMENT for a version label the model does not have, as TF Serving says it."""
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, UNKNOWN_LABEL_PREFIX + label)


class ServableHandle:
    """A reference to a loaded version; `release()` exactly once when the request is done."""

    __slots__ = ("servable", "_manager", "_record", "_released")

    def __init__(self, manager, record):
        self.servable = record.servable
        self._manager = manager
        self._record = record
        self._released = False

    def release(self):
        if not self._released:
            self._released = True
            self._manager._release(self._record)  # pylint: disable=protected-access


class VersionManager:
    """Loads, serves and unloads model versions.

    Args:
      options: ManagerOptions.
      load_fn: load_fn(name, version, path) -> a loaded, warmed-up servable with `.close()`;
        raises ServingError on failure.
      on_change: optional callback(name, version, available: bool) (metrics).
    """

    def __init__(self, options: ManagerOptions, load_fn: Callable, on_change=None):
        self._options = options
        self._load_fn = load_fn
        self._on_change = on_change
        self._models: Dict[str, _Model] = {}
        self._lock = threading.Condition()  # guards state; notified when refs drop
        self._reconcile_lock = threading.RLock()  # one reconcile pass at a time
        self._stop = threading.Event()
        self._thread = None
        self._names = frozenset()

    # ------------------------------------------------------------------ config

    def set_config(self, server_config) -> None:
        """Applies a ModelServerConfig: adds, updates and removes models, loads what is aspired
        (blocking until those loads finish), then applies version labels.

        Raises:
          ServingError: INVALID_ARGUMENT/PERMISSION_DENIED for a bad config (nothing changes);
            FAILED_PRECONDITION when a label points to a version that is not available (the
            models are applied; every model keeps its previous labels).
        """
        config_lib.validate_model_server_config(server_config, self._options.base_path_root)
        wanted = {m.name: m for m in server_config.model_config_list.config}
        with self._reconcile_lock:
            with self._lock:
                for name, model in self._models.items():
                    if name not in wanted and not model.removed:
                        model.removed = True
                for name, model_config in wanted.items():
                    copy = model_server_config_pb2.ModelConfig()
                    copy.CopyFrom(model_config)
                    existing = self._models.get(name)
                    if existing is None or existing.removed:
                        self._models[name] = _Model(copy)
                        if existing is not None:  # keep the ended history
                            self._models[name].versions = {
                                v: r for v, r in existing.versions.items()
                                if r.state == State.END}
                    else:
                        if existing.config.base_path != copy.base_path:
                            for record in existing.versions.values():
                                record.attempts = 0
                        existing.config = copy
                self._refresh_names()
            self._reconcile_all()
            self._apply_labels(wanted)

    def _apply_labels(self, wanted) -> None:
        """Applies every model's version_labels, or none (TF Serving's
        UpdateModelVersionLabelMap): a label must point to an AVAILABLE version, except a
        label not assigned before, which may point to any version with
        --allow_version_labels_for_unavailable_models. Moving an existing label onto a version
        that is not available is refused either way, so a label never stops serving."""
        problems, new_labels = [], {}
        with self._lock:
            for name, model_config in wanted.items():
                model = self._models[name]
                labels = dict(model_config.version_labels)
                for label, v in sorted(labels.items()):
                    if self._is_available(model, v):
                        continue
                    is_new = label not in model.labels
                    if self._options.allow_version_labels_for_unavailable_models and is_new:
                        continue
                    problems.append(
                        f"Request to assign label to version {v} of model {name}, which is not "
                        f"currently available for inference (label '{label}'"
                        + ("; --allow_version_labels_for_unavailable_models allows only labels "
                           "not assigned before" if not is_new else
                           "; --allow_version_labels_for_unavailable_models allows it for a new "
                           "label") + ")")
                new_labels[name] = labels
            if problems:
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, "; ".join(problems))
            for name, labels in new_labels.items():
                self._models[name].labels = labels

    @staticmethod
    def _is_available(model: _Model, version: int) -> bool:
        record = model.versions.get(version)
        return record is not None and record.state == State.AVAILABLE

    # ------------------------------------------------------------------ polling

    def start_polling(self) -> None:
        """Scans base paths every file_system_poll_wait_seconds in a background thread."""
        if self._options.file_system_poll_wait_seconds <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll_loop, name="version_manager",
                                        daemon=True)
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._options.file_system_poll_wait_seconds):
            try:
                with self._reconcile_lock:
                    self._reconcile_all()
            except Exception:  # never let the poller die
                _LOG.exception("version manager poll failed")

    def stop(self) -> None:
        """Stops polling and unloads every version (after in-flight requests finish)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._reconcile_lock:
            with self._lock:
                records = [(name, r) for name, m in self._models.items()
                           for r in m.versions.values() if r.servable is not None]
            for name, record in records:
                self._unload(name, record)

    # ------------------------------------------------------------------ reconcile

    def _reconcile_all(self) -> None:
        with self._lock:
            names = list(self._models)
        for name in names:  # one model's trouble never stops the others
            try:
                self._reconcile(name)
            except Exception as e:  # pylint: disable=broad-except
                with self._lock:
                    model = self._models.get(name)
                    first = model is not None and model.poll_error != repr(e)
                    if model is not None:
                        model.poll_error = repr(e)
                if first:  # once per distinct error, not every poll
                    _LOG.exception("version manager: scanning model %s failed", name)

    def _reconcile(self, name: str) -> None:
        with self._lock:
            model = self._models[name]
            removed = model.removed
            base_path = model.config.base_path
            policy = model.config.model_version_policy
        if removed:
            for record in list(model.versions.values()):
                if record.servable is not None:
                    self._unload(name, record)
            return
        on_disk = version_dirs.scan(base_path, self._options.base_path_root, model.ignored_names)
        if not on_disk and not model.warned_missing:
            _LOG.warning("No versions of servable %s found under base path %s", name, base_path)
            model.warned_missing = True
        aspired = config_lib.aspired_versions(policy, on_disk)
        now = time.monotonic()
        for version in aspired:
            path = on_disk[version]
            with self._lock:
                record = model.versions.get(version)
                if record is not None and record.state == State.END and record.error is None:
                    record = None  # unloaded earlier, aspired again: load afresh
                if record is None:
                    record = _Version(version, path)
                    model.versions[version] = record
                if record.state in (State.AVAILABLE, State.LOADING, State.UNLOADING):
                    continue
                fingerprint = version_dirs.fingerprint(path)
                if record.error is not None and fingerprint != record.fingerprint:
                    record.attempts = 0  # the files changed: try again
                if record.attempts > self._options.max_num_load_retries:
                    continue
                if record.attempts and now < record.next_retry:
                    continue
                record.state = State.LOADING
                record.path = path
                record.fingerprint = fingerprint
            self._load(name, record)
        with self._lock:
            available_aspired = [v for v in aspired if self._is_available(model, v)]
            to_unload = [r for v, r in model.versions.items()
                         if v not in aspired and r.state == State.AVAILABLE]
        # Availability preserving: keep old versions until an aspired one serves.
        if available_aspired:
            for record in to_unload:
                self._unload(name, record)
        self._trim_history(model)

    def _load(self, name: str, record: _Version) -> None:
        _LOG.info("Loading servable %s version %d from %s", name, record.version, record.path)
        try:
            servable = self._load_fn(name, record.version, record.path)
        except Exception as e:  # pylint: disable=broad-except
            error = e if isinstance(e, ServingError) else ServingError(
                grpc.StatusCode.UNKNOWN, f"{type(e).__name__}: {e}")
            _LOG.error("Loading servable %s version %d failed: %s", name, record.version, error)
            with self._lock:
                record.state = State.END
                record.error = error
                record.attempts += 1
                record.next_retry = (time.monotonic()
                                     + self._options.load_retry_interval_micros / 1e6)
            if self._on_change:
                self._on_change(name, record.version, None)
            return
        with self._lock:
            record.servable = servable
            record.error = None
            record.attempts = 0
            record.state = State.AVAILABLE
        _LOG.info("Successfully loaded servable %s version %d", name, record.version)
        if self._on_change:
            self._on_change(name, record.version, True)

    def _unload(self, name: str, record: _Version) -> None:
        with self._lock:
            if record.servable is None:
                return
            record.state = State.UNLOADING  # new requests no longer resolve to it
            deadline = time.monotonic() + self._options.unload_drain_timeout_seconds
            while record.refs > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    _LOG.warning("%s version %d: closing with %d requests in flight",
                                 name, record.version, record.refs)
                    break
                self._lock.wait(left)
            servable, record.servable = record.servable, None
        if self._on_change:
            self._on_change(name, record.version, False)
        try:
            servable.close()
        finally:
            with self._lock:
                record.state = State.END
        _LOG.info("Unloaded servable %s version %d", name, record.version)

    def _trim_history(self, model: _Model) -> None:
        with self._lock:
            ended = sorted(v for v, r in model.versions.items()
                           if r.state == State.END and r.error is None)
            for v in ended[:-_MAX_ENDED_RECORDS]:
                del model.versions[v]

    # ------------------------------------------------------------------ requests

    def acquire(self, model_spec) -> ServableHandle:
        """Resolves a ModelSpec (name + version | version_label | latest) to a loaded version.

        Raises:
          ServingError(NOT_FOUND) for an unknown model or version, or a label on a version
            that is not available; INVALID_ARGUMENT "Unrecognized servable version label:
            <label>" for an unknown label (TF Serving's code and message, which the proxy
            recognises).
        """
        name = model_spec.name
        choice = model_spec.WhichOneof("version_choice")
        with self._lock:
            model = self._models.get(name)
            if model is None or model.removed:
                if not name:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       "model_spec.name is empty; name the model to query")
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: "
                                   f"{_describe(name, choice, model_spec)}")
            if choice == "version":
                record = model.versions.get(model_spec.version.value)
            elif choice == "version_label":
                label = model_spec.version_label
                if label not in model.labels:
                    raise unknown_label_error(label)
                record = model.versions.get(model.labels[label])
            else:
                record = None
                for v in sorted(model.versions, reverse=True):
                    if model.versions[v].state == State.AVAILABLE:
                        record = model.versions[v]
                        break
            if record is None or record.state != State.AVAILABLE:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: "
                                   f"{_describe(name, choice, model_spec)}")
            record.refs += 1
            return ServableHandle(self, record)

    def _release(self, record: _Version) -> None:
        with self._lock:
            record.refs -= 1
            if record.refs == 0 and record.state == State.UNLOADING:
                self._lock.notify_all()

    def model_status(self, model_spec) -> List:
        """ModelVersionStatus protos for GetModelStatus.

        Raises:
          ServingError(NOT_FOUND) for an unknown model or version; INVALID_ARGUMENT for an
            unknown label (as acquire).
        """
        name = model_spec.name
        choice = model_spec.WhichOneof("version_choice")
        with self._lock:
            model = self._models.get(name)
            if model is None or not model.versions and model.removed:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {name}")
            if choice == "version":
                record = model.versions.get(model_spec.version.value)
                if record is None:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Could not find version {model_spec.version.value} of "
                                       f"model {name}")
                return [record.status_proto()]
            if choice == "version_label":
                if model_spec.version_label not in model.labels:
                    raise unknown_label_error(model_spec.version_label)
                record = model.versions.get(model.labels[model_spec.version_label])
                return [record.status_proto()] if record else []
            if not model.versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {name}")
            return [model.versions[v].status_proto() for v in sorted(model.versions)]

    def model_names(self) -> frozenset:
        """Names of the configured (not removed) models (a snapshot, cheap to read)."""
        return self._names

    def _refresh_names(self) -> None:
        self._names = frozenset(n for n, m in self._models.items() if not m.removed)

    def available_versions(self, name: str) -> Tuple[int, ...]:
        with self._lock:
            model = self._models.get(name)
            if model is None:
                return ()
            return tuple(sorted(v for v, r in model.versions.items()
                                if r.state == State.AVAILABLE))


def _describe(name, choice, model_spec) -> str:
    if choice == "version":
        return f"Specific({name}, {model_spec.version.value})"
    if choice == "version_label":
        return f"Labeled({name}, {model_spec.version_label})"
    return f"Latest({name})"
