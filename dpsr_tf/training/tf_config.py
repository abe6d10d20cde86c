"""TF_CONFIG: the cluster description TensorFlow's distributed runtime reads from the environment.

TF_CONFIG = {"cluster": {"chief": ["host:port"], "worker": [...], "ps": [...]},
             "task": {"type": "chief" | "worker" | "ps" | "evaluator", "index": i}}
The evaluator is not part of the cluster (it only reads checkpoints).
"""
import dataclasses
import json
import os
import socket
from typing import Dict, List, Optional

TASK_TYPES = ("chief", "worker", "ps", "evaluator")


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    """This process's view of the cluster.

    Attributes:
      cluster: job name -> list of "host:port" ({} when running on one machine).
      task_type: "chief", "worker", "ps" or "evaluator" ("chief" when there is no TF_CONFIG).
      task_index: index inside the job.
    """

    cluster: Dict[str, List[str]]
    task_type: str = "chief"
    task_index: int = 0

    @property
    def num_ps(self) -> int:
        return len(self.cluster.get("ps", []))

    @property
    def num_workers(self) -> int:
        """Training replicas: the chief plus the workers."""
        return len(self.cluster.get("chief", [])) + len(self.cluster.get("worker", []))

    @property
    def num_replicas(self) -> int:
        """Training replicas that each read their own input shard: 1 on one machine."""
        return max(1, self.num_workers) if self.distributed else 1

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief"

    @property
    def replica_index(self) -> int:
        """0 for the chief, 1 + i for worker i, 0 for ps / evaluator (seeds and input shards of
        the training replicas)."""
        return self.task_index + 1 if self.task_type == "worker" else 0

    @property
    def distributed(self) -> bool:
        return bool(self.cluster)


def parse(text: Optional[str]) -> ClusterInfo:
    """Parses a TF_CONFIG value; None or "" means a single local process.

    Raises:
      ValueError: malformed JSON, unknown task type, index out of range, or a task missing from
        its job (the message quotes the value).
    """
    if not text:
        return ClusterInfo(cluster={})
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {text[:200]!r}") from None
    cluster = {job: list(addrs) for job, addrs in (data.get("cluster") or {}).items()}
    task = data.get("task") or {}
    task_type = task.get("type", "chief")
    index = int(task.get("index", 0))
    if task_type not in TASK_TYPES:
        raise ValueError(f"TF_CONFIG task.type={task_type!r}: choose one of {TASK_TYPES}")
    unknown = sorted(set(cluster) - {"chief", "worker", "ps"})
    if unknown:
        raise ValueError(f"TF_CONFIG cluster has unknown jobs {unknown}; use chief, worker, ps "
                         "(the evaluator is not listed in the cluster)")
    if cluster and len(cluster.get("chief", [])) != 1:
        raise ValueError(f"TF_CONFIG cluster needs exactly one chief, got {cluster.get('chief')}")
    if task_type != "evaluator" and cluster:
        if not 0 <= index < len(cluster.get(task_type, [])):
            raise ValueError(f"TF_CONFIG task {task_type}:{index} is not in cluster "
                             f"{task_type}={cluster.get(task_type, [])}")
    return ClusterInfo(cluster=cluster, task_type=task_type, task_index=index)


def from_env() -> ClusterInfo:
    return parse(os.environ.get("TF_CONFIG"))


def make(cluster: Dict[str, List[str]], task_type: str, task_index: int) -> str:
    """The TF_CONFIG JSON for one task of `cluster`."""
    text = json.dumps({"cluster": cluster, "task": {"type": task_type, "index": task_index}})
    parse(text)
    return text


def free_ports(count: int, host: str = "127.0.0.1") -> List[int]:
    """`count` distinct TCP ports that were free a moment ago (bound together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def loopback_cluster(num_workers: int, num_ps: int, host: str = "localhost") -> Dict[str, list]:
    """A chief + num_workers workers + num_ps parameter servers on free loopback ports."""
    if num_workers < 0 or num_ps < 0:
        raise ValueError(f"workers={num_workers} and ps={num_ps} must be >= 0")
    ports = free_ports(1 + num_workers + num_ps)
    cluster = {"chief": [f"{host}:{ports[0]}"]}
    if num_workers:
        cluster["worker"] = [f"{host}:{p}" for p in ports[1:1 + num_workers]]
    if num_ps:
        cluster["ps"] = [f"{host}:{p}" for p in ports[1 + num_workers:]]
    return cluster
