"""The proxy's config file: which model servers hold which model (text-format ProxyConfig).

    # proxy.config
    default_deadline_ms: 1000
    model {
      name: "dpsr"                       # the name clients ask for
      shard { replica: "10.0.0.1:8500" replica: "10.0.0.2:8500" }   # shard 0, two replicas
      shard { replica: "10.0.0.3:8500" }                            # shard 1
      backend_model_name: "dpsr"         # name on the model servers (default: name)
      deadline_ms: 200                   # per request (default: default_deadline_ms)
      shard_deadline_ms: 150             # a shard slower than this is left out (default 80%)
      partial_policy: ALLOW_PARTIAL      # or FAIL: any missing shard fails the request
    }
    model { name: "dpsr_small" shard { replica: "127.0.0.1:8600" } }   # unsharded, one server

A model with one shard is routed (load balancing and failover over its replicas); a model with
several shards is fanned out and merged into one global top-K (dpsr_tf/serving/merge.py).
"""
import dataclasses
from typing import Dict, Tuple

import grpc

from dpsr_tf.serving import config as config_lib
from dpsr_tf.serving import protos
from dpsr_tf.serving.errors import ServingError

DEFAULT_DEADLINE_MS = 1000
DEFAULT_BACKOFF_MS = 1000


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
class ProxySettings:
    routes: Dict[str, RouteSpec]
    backoff_s: float


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
    routes = {}
    for i, model in enumerate(cfg.model):
        if not model.name:
            raise bad(f"model[{i}] has no name")
        if model.name in routes:
            raise bad(f"model '{model.name}' appears twice")
        if not model.shard:
            raise bad(f"model '{model.name}' lists no shard {{ replica: \"host:port\" }}")
        shards = []
        for s, shard in enumerate(model.shard):
            if not shard.replica:
                raise bad(f"model '{model.name}' shard {s} has no replica")
            for address in shard.replica:
                _check_address(address, f"{where}: model '{model.name}' shard {s}")
            shards.append(tuple(shard.replica))
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
    backoff = (cfg.replica_retry_backoff_ms or DEFAULT_BACKOFF_MS) / 1000.0
    return ProxySettings(routes=routes, backoff_s=backoff)


def read_proxy_settings(path: str) -> ProxySettings:
    cfg = config_lib.read_text_proto(path, protos.ProxyConfig, "--proxy_config_file")
    return settings_from_proto(cfg, f"--proxy_config_file {path}")


def parse_proxy_settings(text: str, where: str = "proxy config") -> ProxySettings:
    cfg = config_lib.parse_text_proto(text, protos.ProxyConfig, where)
    return settings_from_proto(cfg, where)


def proxy_config_text(routes: Dict[str, Tuple[Tuple[str, ...], ...]], **model_fields) -> str:
    """Text of a ProxyConfig: model name -> shards (each a tuple of replica addresses).

    Extra keyword arguments are set on every model (e.g. deadline_ms=500,
    partial_policy="FAIL").
    """
    lines = []
    for name, shards in routes.items():
        lines.append("model {")
        lines.append(f'  name: "{name}"')
        for shard in shards:
            replicas = " ".join(f'replica: "{r}"' for r in shard)
            lines.append(f"  shard {{ {replicas} }}")
        for key, value in model_fields.items():
            if isinstance(value, str) and key != "partial_policy":
                value = f'"{value}"'
            lines.append(f"  {key}: {value}")
        lines.append("}")
    return "\n".join(lines) + "\n"
