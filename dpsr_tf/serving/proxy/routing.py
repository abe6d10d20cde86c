"""The proxy's replicas and their health: which replica of a shard gets a call.

Outlier ejection (the rule; knobs in the ProxyConfig, dpsr_tf/serving/proxy/config.py):

* A replica is *ejected* (taken out of rotation) after `outlier_consecutive_failures`
  consecutive failures, where a failure is a call that timed out, a call that was still
  unanswered when a hedge to another replica answered first (it was slower than the hedge
  delay), or a DEADLINE_EXCEEDED answer. UNAVAILABLE (down, restarting, refusing connections)
  ejects at once. Any good answer resets the count.
* A timeout, lost hedge or DEADLINE_EXCEEDED of a call sent before the replica's last good
  answer of a model call is no failure: the replica served meanwhile, so the call was slow for
  its own sake (too heavy for the deadline its client gave it). A timeout of a call whose
  client gave it less time than the proxy's own deadline is judged only once that deadline has
  passed since it was sent (`verdict_at`): a failure if the replica answered nothing good
  meanwhile. A client's short deadline thus never makes the proxy judge a replica sooner than
  its own deadline would. Otherwise one client's heavy calls with short deadlines ejected a
  shard's only replica for every client, whenever they saturated it so that no other answer
  came within their deadline.
* The k-th ejection in a row lasts min(`outlier_max_ejection_ms`,
  `replica_retry_backoff_ms` * 2^(k-1)).
* When it ends, the replica gets one *trial* call (other calls keep avoiding it meanwhile):
  a good answer returns it to rotation and resets k; a failure ejects it again, for longer.
  Failures of calls sent before the ejection began (the calls in flight when it hung) change
  nothing: the length of an ejection follows failed trials, not the traffic that was in flight.
* No call waits on a *hung* replica, one ejected for timeouts or lost hedges: when every
  replica of a shard left to try is ejected, none is due for its trial, and those are hung, the
  shard fails at once with UNAVAILABLE, and the request gets the shard's partial_policy (a
  partial answer, or UNAVAILABLE under FAIL) instead of waiting out the shard deadline on a
  replica known to hang. A shard of one hung replica is thus switched off for the ejection,
  then probed back by its trial call.
* Only answers of calls that run the model count as good answers: GetModelMetadata and
  GetModelStatus are answered by a replica whose runs hang, so they neither reset the count
  nor readmit a replica (the proxy's signature lookups would otherwise readmit a hung one).
* A replica ejected for UNAVAILABLE (it answers, but refuses: down, restarting) is still tried
  when it is the last one left, the one whose ejection ends first: it costs no wait, and a
  restarted server is back at its first call.
"""
import collections
import dataclasses
import heapq
import time
from typing import Callable, Dict, List, Optional

import grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from dpsr_tf.serving.proxy import config as proxy_config
from dpsr_tf.serving.proxy.forwarding import request_bytes
from dpsr_tf.serving.proxy.framed_shard import FramedShardClient

_MIN_LATENCY_SAMPLES = 20  # below this the hedge delay is the budget fraction alone
_LATENCY_WINDOW = 128


@dataclasses.dataclass(frozen=True)
class BackendTls:
    """How the proxy speaks TLS to its model servers.

    Attributes:
      root_certificates: PEM of the CA that signed the servers' certificates (None: the
        system's roots).
      private_key, certificate_chain: PEM of the proxy's client key and certificate, for
        servers whose SSLConfig has client_verify (mutual TLS); both or neither.
      target_name: the name the servers' certificates carry, when it is not the host of the
        replica address (grpc.ssl_target_name_override); "" uses the address.
    """

    root_certificates: Optional[bytes] = None
    private_key: Optional[bytes] = None
    certificate_chain: Optional[bytes] = None
    target_name: str = ""

    def __post_init__(self):
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("a backend client certificate needs its key and the key its "
                             "certificate (give both or neither)")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key,
                                            self.certificate_chain)


# Called with (replica, True) at each ejection and (replica, False) when it rejoins.
EjectionListener = Callable[["Replica", bool], None]


class Replica:
    """A model server address, its channels (one TCP connection each, used in turn) and its
    health, shared by every route that uses it."""

    def __init__(self, address: str, tls: Optional[BackendTls] = None, connections: int = 1,
                 listener: Optional[EjectionListener] = None, framed_socket: str = ""):
        self.address = address
        self._connections = max(1, connections)
        # Predict as frames to a server on this host (framed_shard.py); None: over gRPC.
        self.framed: Optional[FramedShardClient] = None
        self.use_framed_socket(framed_socket)
        options = [
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.enable_retries", 0),
        ]
        if connections > 1:  # else gRPC shares one connection between equal channels
            options.append(("grpc.use_local_subchannel_pool", 1))
        if tls is not None and tls.target_name:
            options.append(("grpc.ssl_target_name_override", tls.target_name))
        self.channels = [
            grpc.aio.insecure_channel(address, options=options) if tls is None else
            grpc.aio.secure_channel(address, tls.credentials(), options=options)
            for _ in range(max(1, connections))]
        self._stubs = [prediction_service_pb2_grpc.PredictionServiceStub(c)
                       for c in self.channels]
        self._raw: Dict[str, list] = {}  # method -> per channel, a call returning bytes
        self._calls = 0
        self._listener = listener
        self.outstanding = 0
        self.consecutive_failures = 0
        self.answered_at = 0.0  # monotonic time of the last good answer of a model call
        # Timeouts awaiting their verdict, a heap of (judged at, sent at): calls whose
        # client's deadline was shorter than the proxy's (the module's rule).
        self._pending: List[tuple] = []
        self._policy: Optional[proxy_config.OutlierPolicy] = None
        self.ejections = 0  # ejections since the last good answer
        self.ejected = False
        self.hung = False  # ejected for timeouts, not for refusing calls
        self.ejected_until = 0.0
        self.ejected_at = 0.0  # when the current ejection began
        self.trial_in_flight = False
        # backend model name -> until when this replica is known to have no servable version
        # of it (it answered NOT_FOUND for the latest version): others are preferred meanwhile.
        self.missing_until: Dict[str, float] = {}

    @property
    def stub(self):
        """The stub of the next connection (round robin)."""
        self._calls += 1
        return self._stubs[self._calls % len(self._stubs)]

    def raw(self, method: str):
        """A PredictionService `method` callable of the next connection whose answer is the
        serialized message (bytes), for the caller to check before parsing."""
        if method not in self._raw:
            self._raw[method] = [channel.unary_unary(
                f"/tensorflow.serving.PredictionService/{method}",
                request_serializer=request_bytes, response_deserializer=None)
                for channel in self.channels]
        self._calls += 1
        return self._raw[method][self._calls % len(self.channels)]

    def use_framed_socket(self, path: str) -> None:
        """Sends Predict as frames to `path` ("": over gRPC), from the next call on (a reload
        that changes it retires the old connections: they answer their calls, then close)."""
        if (self.framed.path if self.framed is not None else "") == (path or ""):
            return
        if self.framed is not None:
            self.framed.close()
        self.framed = FramedShardClient(path, self._connections) if path else None

    async def close(self) -> None:
        if self.framed is not None:
            self.framed.close()
        for channel in self.channels:
            await channel.close()

    # ------------------------------------------------------------------ health

    def record_success(self, runs_model: bool = True) -> None:
        """A good answer. Only one of a call that runs the model (Predict, Classify, ...)
        says the replica serves: a metadata or status answer comes from another path (a
        replica whose runs hang still answers metadata), so it changes no failure count and
        readmits nothing; as a trial it only frees the trial for the next call."""
        if not runs_model:
            self.trial_in_flight = False
            return
        self.answered_at = time.monotonic()
        self.consecutive_failures = 0
        self.trial_in_flight = False
        if self.ejected:
            self.ejected = False
            self.hung = False
            self.ejected_until = 0.0
            if self._listener is not None:
                self._listener(self, False)
        self.ejections = 0

    def record_failure(self, policy: proxy_config.OutlierPolicy, immediate: bool = False,
                       started: Optional[float] = None,
                       verdict_at: Optional[float] = None) -> None:
        """A timeout, a lost hedge or (immediate) UNAVAILABLE of a call sent at `started`
        (time.monotonic()); ejects by the module's rule. `verdict_at`: for a timeout of a
        call its client gave less time than the proxy's deadline, when that deadline passes
        (it is judged then).

        A call sent before the current ejection began says nothing new: the calls in flight
        when a replica hangs all time out after it is ejected, and counting each as another
        ejection in a row would make the ejection's length follow the traffic in flight
        instead of the failed trials. Nor does a timeout of a call sent before the replica's
        last good answer (the module's rule): it served meanwhile."""
        self._policy = policy
        now = time.monotonic()
        self.judge_pending(now)
        if not immediate and started is not None and verdict_at is not None and now < verdict_at:
            heapq.heappush(self._pending, (verdict_at, started))
            if self.ejected and started >= self.ejected_at:
                self.trial_in_flight = False  # the trial, without a verdict yet: allow another
            return
        self._count_failure(policy, immediate, started)

    def judge_pending(self, now: float) -> None:
        """Counts the timeouts whose verdict is due (`record_failure`'s `verdict_at`) and that
        no good answer followed."""
        while self._pending and self._pending[0][0] <= now and self._policy is not None:
            _, started = heapq.heappop(self._pending)
            self._count_failure(self._policy, False, started, deferred=True)

    def _count_failure(self, policy: proxy_config.OutlierPolicy, immediate: bool,
                       started: Optional[float], deferred: bool = False) -> None:
        if self.ejected and started is not None and started < self.ejected_at:
            return
        if not immediate and started is not None and started < self.answered_at:
            return
        if deferred:  # a trial sent during this ejection (the check above), judged late
            was_trial = self.ejected
        else:
            was_trial = self.trial_in_flight
            self.trial_in_flight = False
        self.consecutive_failures += 1
        if immediate or was_trial or self.consecutive_failures >= policy.consecutive_failures:
            self._eject(policy, hung=not immediate)

    def release_trial(self) -> None:
        """A trial call ended without a verdict (cancelled by its client): allow another."""
        self.trial_in_flight = False

    def _eject(self, policy: proxy_config.OutlierPolicy, hung: bool) -> None:
        self.ejections += 1
        self.hung = hung
        period = min(policy.max_ejection_s,
                     policy.base_ejection_s * 2 ** min(self.ejections - 1, 20))
        self.ejected_at = time.monotonic()
        self.ejected_until = self.ejected_at + period
        self.consecutive_failures = 0
        self.ejected = True
        if self._listener is not None:
            self._listener(self, True)

    def mark_missing(self, model: str, backoff: float) -> None:
        self.missing_until[model] = time.monotonic() + backoff

    def ready_at(self, model: str) -> float:
        """When this replica is worth trying for `model` (<= now: at once)."""
        return max(self.ejected_until if self.ejected else 0.0,
                   self.missing_until.get(model, 0.0))

    def in_rotation(self, model: str, now: float) -> bool:
        """Whether a call may go here now: not ejected (or its trial is due and not taken),
        and not known to lack the model. Due verdicts are judged first."""
        self.judge_pending(now)
        if self.ejected and (self.trial_in_flight or now < self.ejected_until):
            return False
        return self.missing_until.get(model, 0.0) <= now

    def begin_call(self) -> None:
        """Marks a call sent; the first one after an ejection is the trial."""
        self.outstanding += 1
        if self.ejected:
            self.trial_in_flight = True


class LatencyWindow:
    """The latencies of a shard's recent good answers (seconds)."""

    def __init__(self, size: int = _LATENCY_WINDOW):
        self._samples = collections.deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)

    def quantile(self, q: float) -> Optional[float]:
        """The q-quantile, or None while there are too few samples to trust it."""
        if len(self._samples) < _MIN_LATENCY_SAMPLES:
            return None
        ordered = sorted(self._samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Route:
    """A model's RouteSpec with live replicas."""

    def __init__(self, spec: proxy_config.RouteSpec, replicas: Dict[str, Replica]):
        self.spec = spec
        self.shards: List[List[Replica]] = [[replicas[a] for a in shard] for shard in spec.shards]
        self.latency = [LatencyWindow() for _ in self.shards]
        self._turn = [0] * len(self.shards)
        self.mergeable: Dict[str, tuple] = {}  # signature -> (SignaturePlan, time learned)
        self.refreshing = set()

    def pick(self, shard: int, tried, in_rotation_only: bool = False) -> Optional[Replica]:
        """Least outstanding replica in rotation not tried yet; when none is in rotation, the
        one ready first that is not hung (unless `in_rotation_only`, as for a hedge). None when
        all were tried or the rest are hung (see `hung_left`)."""
        now = time.monotonic()
        model = self.spec.backend_model_name
        candidates = [r for r in self.shards[shard] if r not in tried]
        if not candidates:
            return None
        live = [r for r in candidates if r.in_rotation(model, now)]
        if not live:
            usable = [r for r in candidates if not (r.ejected and r.hung)]
            if in_rotation_only or not usable:
                return None
            return min(usable, key=lambda r: r.ready_at(model))
        self._turn[shard] += 1
        n = len(live)
        rotated = [live[(self._turn[shard] + i) % n] for i in range(n)]
        return min(rotated, key=lambda r: r.outstanding)


    def hung_left(self, shard: int, tried) -> List[Replica]:
        """The replicas of `shard` not tried yet that are ejected as hung, the trial due first
        first."""
        return sorted((r for r in self.shards[shard] if r not in tried and r.ejected and r.hung),
                      key=lambda r: r.ejected_until)


class Router:
    """Routes for every configured model; replaced as a whole on config reload."""

    def __init__(self, settings: proxy_config.ProxySettings, pool: Dict[str, Replica],
                 backend_tls: Optional[BackendTls] = None, backend_connections: int = 1,
                 listener: Optional[EjectionListener] = None):
        self.settings = settings
        for spec in settings.routes.values():
            for shard in spec.shards:
                for address in shard:
                    framed_socket = settings.framed_sockets.get(address, "")
                    if address not in pool:
                        pool[address] = Replica(address, backend_tls, backend_connections,
                                                listener, framed_socket)
                    else:
                        pool[address].use_framed_socket(framed_socket)
        self.routes = {name: Route(spec, pool) for name, spec in settings.routes.items()}

    def addresses(self):
        return {a for spec in self.settings.routes.values() for shard in spec.shards
                for a in shard}
