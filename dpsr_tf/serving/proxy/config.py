"""The proxy's config file: which model servers hold which model (text-format ProxyConfig).

    # proxy.config
    default_deadline_ms: 1000
    model {
      name: "dpsr"                       # the name clients ask for
      shard { replica: "10.0.0.1:8500" replica: "10.0.0.2:8500" }   # shard 0, two replicas
      shard { replica: "10.0.0.3:8500" }                            # shard 1
      # a server on the proxy's own host, started with --framed_predict_socket: Predict goes
      # to it as frames on that socket (cheaper than gRPC), every other method to the address
      shard { local_replica { address: "127.0.0.1:8501" framed_socket: "/run/dpsr/s2.sock" } }
      backend_model_name: "dpsr"         # name on the model servers (default: name)
      deadline_ms: 200                   # per request (default: default_deadline_ms)
      shard_deadline_ms: 150             # a shard slower than this is left out (default 80%)
      partial_policy: ALLOW_PARTIAL      # or FAIL: any missing shard fails the request
    }
    model { name: "dpsr_small" shard { replica: "127.0.0.1:8600" } }   # unsharded, one server
    # replica health and hedging (defaults shown; docs/serving.md, "Slow and hung replicas")
    replica_retry_backoff_ms: 1000       # first ejection of a replica; doubles while it fails
    outlier_consecutive_failures: 3      # timeouts / lost hedges in a row that eject a replica
    outlier_max_ejection_ms: 30000       # cap of the doubling ejection time
    hedge_budget_fraction: 0.25          # an attempt gets at most this share of the time left
    hedge_min_delay_ms: 10               # floor of the latency-based hedge delay
    disable_hedging: false               # true: a second replica only after the first fails

A model with one shard is routed (load balancing and failover over its replicas); a model with
several shards is fanned out and merged into one global top-K (dpsr_tf/serving/proxy/merge.py).
"""
import dataclasses
import os
from typing import Dict, Tuple

import grpc

from dpsr_tf.serving import config as config_lib
from dpsr_tf.serving import protos
from dpsr_tf.serving.errors import ServingError

DEFAULT_DEADLINE_MS = 1000
DEFAULT_BACKOFF_MS = 1000
DEFAULT_OUTLIER_FAILURES = 3
DEFAULT_MAX_EJECTION_MS = 30000
DEFAULT_HEDGE_FRACTION = 0.25
DEFAULT_HEDGE_MIN_DELAY_MS = 10
HEDGE_LATENCY_QUANTILE = 0.95
HEDGE_LATENCY_MULTIPLIER = 2.0
MAX_SOCKET_PATH_BYTES = 107  # sockaddr_un's sun_path, less its terminating NUL (Linux)


@dataclasses.dataclass(frozen=True)
class RouteSpec:
    """One model's routing.

    Attributes:
      name: model name clients use.
      backend_model_name: name on the model servers.
      shards: per shard, the replica addresses (host:port).
      deadline_s: per-request deadline (the client's applies when shorter).
      shard_deadline_s: a shard must answer within this (0: 80% of the request deadline).
      allow_partial: answer from the shards that answered (True) or fail (False).
      id_output, score_output, k_input: aliases used by the merge.
    """

    name: str
    backend_model_name: str
    shards: Tuple[Tuple[str, ...], ...]
    deadline_s: float
    shard_deadline_s: float
    allow_partial: bool
    id_output: str = "item_ids"
    score_output: str = "scores"
    k_input: str = "k"

    @property
    def sharded(self) -> bool:
        return len(self.shards) > 1


@dataclasses.dataclass(frozen=True)
class OutlierPolicy:
    """When a replica leaves the rotation (rule: dpsr_tf/serving/proxy/routing.py).

    Attributes:
      consecutive_failures: timeouts or lost hedges in a row that eject a replica.
      base_ejection_s: the first ejection's length; each further one in a row doubles it.
      max_ejection_s: the longest ejection.
    """

    consecutive_failures: int = DEFAULT_OUTLIER_FAILURES
    base_ejection_s: float = DEFAULT_BACKOFF_MS / 1000.0
    max_ejection_s: float = DEFAULT_MAX_EJECTION_MS / 1000.0


@dataclasses.dataclass(frozen=True)
class HedgePolicy:
    """When the same call goes to another replica of the shard while the first is unanswered.

    The hedge delay is min(budget_fraction * time left before the shard deadline,
    max(min_delay_s, 2 * the p95 of the shard's last 128 good answers)); with fewer than 20
    answers seen, the budget fraction alone.

    Attributes:
      enabled: False: another replica is tried only after an attempt fails.
      budget_fraction: the share of the remaining shard deadline an attempt gets alone.
      min_delay_s: floor of the latency-based delay.
    """

    enabled: bool = True
    budget_fraction: float = DEFAULT_HEDGE_FRACTION
    min_delay_s: float = DEFAULT_HEDGE_MIN_DELAY_MS / 1000.0

    def delay(self, remaining_s: float, recent_p95_s) -> float:
        """Seconds to wait for an attempt before hedging (`recent_p95_s` None: unknown)."""
        cap = self.budget_fraction * max(0.0, remaining_s)
        if recent_p95_s is None:
            return cap
        return min(cap, max(self.min_delay_s, HEDGE_LATENCY_MULTIPLIER * recent_p95_s))


@dataclasses.dataclass(frozen=True)
class ProxySettings:
    """A checked ProxyConfig: the routes, the replica policies, and for each local replica's
    address its framed Predict socket (proxy/framed_shard.py)."""

    routes: Dict[str, RouteSpec]
    backoff_s: float
    outlier: OutlierPolicy = OutlierPolicy()
    hedge: HedgePolicy = HedgePolicy()
    framed_sockets: Dict[str, str] = dataclasses.field(default_factory=dict)


def _check_address(address: str, where: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{where}: replica '{address}' is not host:port")


def settings_from_proto(cfg, where: str = "proxy config") -> ProxySettings:
    """Checks a ProxyConfig and resolves defaults. Raises ServingError(INVALID_ARGUMENT)."""
    bad = lambda msg: ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"{where}: {msg}")  # noqa
    default_deadline = cfg.default_deadline_ms or DEFAULT_DEADLINE_MS
    if default_deadline < 0:
        raise bad(f"default_deadline_ms is {cfg.default_deadline_ms}; it must be > 0")
    routes, framed_sockets, plain = {}, {}, set()  # plain: addresses listed as `replica`
    for i, model in enumerate(cfg.model):
        if not model.name:
            raise bad(f"model[{i}] has no name")
        if model.name in routes:
            raise bad(f"model '{model.name}' appears twice")
        if not model.shard:
            raise bad(f"model '{model.name}' lists no shard {{ replica: \"host:port\" }}")
        shards = []
        for s, shard in enumerate(model.shard):
            if not shard.replica and not shard.local_replica:
                raise bad(f"model '{model.name}' shard {s} has no replica")
            for address in shard.replica:
                _check_address(address, f"{where}: model '{model.name}' shard {s}")
            plain.update(shard.replica)
            for local in shard.local_replica:
                at = f"model '{model.name}' shard {s} local_replica '{local.address}'"
                _check_address(local.address, f"{where}: {at}")
                if not os.path.isabs(local.framed_socket):
                    raise bad(f"{at}: framed_socket '{local.framed_socket}' must be an "
                              "absolute path (the server's --framed_predict_socket)")
                if len(os.fsencode(local.framed_socket)) > MAX_SOCKET_PATH_BYTES:
                    raise bad(f"{at}: framed_socket '{local.framed_socket}' is longer than a "
                              f"UNIX socket's path may be ({MAX_SOCKET_PATH_BYTES} bytes)")
                if framed_sockets.get(local.address, local.framed_socket) != local.framed_socket:
                    raise bad(f"{at}: framed_socket '{local.framed_socket}' differs from "
                              f"'{framed_sockets[local.address]}' given for it before")
                other = next((a for a, path in framed_sockets.items()
                              if path == local.framed_socket and a != local.address), None)
                if other is not None:  # Predict would reach one server, the rest the other
                    raise bad(f"{at}: framed_socket '{local.framed_socket}' is also "
                              f"local_replica '{other}'s; one server has one socket")
                framed_sockets[local.address] = local.framed_socket
            shards.append(tuple(shard.replica) + tuple(r.address for r in shard.local_replica))
        if model.deadline_ms < 0 or model.shard_deadline_ms < 0:
            raise bad(f"model '{model.name}': deadlines must be >= 0")
        deadline = (model.deadline_ms or default_deadline) / 1000.0
        if model.shard_deadline_ms and model.shard_deadline_ms / 1000.0 > deadline:
            raise bad(f"model '{model.name}': shard_deadline_ms {model.shard_deadline_ms} exceeds "
                      f"the request deadline {deadline * 1000:.0f} ms")
        routes[model.name] = RouteSpec(
            name=model.name,
            backend_model_name=model.backend_model_name or model.name,
            shards=tuple(shards),
            deadline_s=deadline,
            shard_deadline_s=model.shard_deadline_ms / 1000.0,
            allow_partial=model.partial_policy == protos.PARTIAL_POLICY.values_by_name[
                "ALLOW_PARTIAL"].number,
            id_output=model.id_output or "item_ids",
            score_output=model.score_output or "scores",
            k_input=model.k_input or "k")
    if not routes:
        raise bad("no model { ... } entries")
    if cfg.replica_retry_backoff_ms < 0 or cfg.outlier_max_ejection_ms < 0:
        raise bad("replica_retry_backoff_ms and outlier_max_ejection_ms must be >= 0")
    if cfg.outlier_consecutive_failures < 0:
        raise bad(f"outlier_consecutive_failures is {cfg.outlier_consecutive_failures}; it "
                  "must be >= 1 (0: the default, 3)")
    if not 0 <= cfg.hedge_budget_fraction < 1 or cfg.hedge_min_delay_ms < 0:
        raise bad(f"hedge_budget_fraction is {cfg.hedge_budget_fraction} and "
                  f"hedge_min_delay_ms {cfg.hedge_min_delay_ms}; they must be in (0, 1) and "
                  ">= 0 (0: the defaults, 0.25 and 10)")
    backoff = (cfg.replica_retry_backoff_ms or DEFAULT_BACKOFF_MS) / 1000.0
    outlier = OutlierPolicy(
        consecutive_failures=cfg.outlier_consecutive_failures or DEFAULT_OUTLIER_FAILURES,
        base_ejection_s=backoff,
        max_ejection_s=max(backoff, (cfg.outlier_max_ejection_ms or DEFAULT_MAX_EJECTION_MS)
                           / 1000.0))
    hedge = HedgePolicy(
        enabled=not cfg.disable_hedging,
        budget_fraction=cfg.hedge_budget_fraction or DEFAULT_HEDGE_FRACTION,
        min_delay_s=(cfg.hedge_min_delay_ms or DEFAULT_HEDGE_MIN_DELAY_MS) / 1000.0)
    both = plain & set(framed_sockets)
    if both:
        raise bad(f"replica '{sorted(both)[0]}' is listed both as a replica and as a "
                  "local_replica; list it one way")
    return ProxySettings(routes=routes, backoff_s=backoff, outlier=outlier, hedge=hedge,
                         framed_sockets=framed_sockets)


def read_proxy_settings(path: str) -> ProxySettings:
    cfg = config_lib.read_text_proto(path, protos.ProxyConfig, "--proxy_config_file")
    return settings_from_proto(cfg, f"--proxy_config_file {path}")


def parse_proxy_settings(text: str, where: str = "proxy config") -> ProxySettings:
    cfg = config_lib.parse_text_proto(text, protos.ProxyConfig, where)
    return settings_from_proto(cfg, where)


def proxy_config_text(routes: Dict[str, Tuple[Tuple[str, ...], ...]], **model_fields) -> str:
    """Text of a ProxyConfig: model name -> shards (each a tuple of replicas: an address, or
    (address, framed socket) for a local_replica).

    Extra keyword arguments are set on every model (e.g. deadline_ms=500,
    partial_policy="FAIL").
    """
    lines = []
    for name, shards in routes.items():
        lines.append("model {")
        lines.append(f'  name: "{name}"')
        for shard in shards:
            replicas = " ".join(
                f'replica: "{r}"' if isinstance(r, str) else
                f'local_replica {{ address: "{r[0]}" framed_socket: "{r[1]}" }}' for r in shard)
            lines.append(f"  shard {{ {replicas} }}")
        for key, value in model_fields.items():
            if isinstance(value, str) and key != "partial_policy":
                value = f'"{value}"'
            lines.append(f"  {key}: {value}")
        lines.append("}")
    return "\n".join(lines) + "\n"
