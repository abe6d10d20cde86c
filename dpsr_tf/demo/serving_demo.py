"""The serving half of `make demo`: servers up, queries through the proxy, servers down.

    from dpsr_tf.demo.serving_demo import run_serving_demo
    run_serving_demo(["/tmp/demo/export/dpsr"], ["apple phone", "cordless drill"])

One model server per model directory (one directory: an unsharded model; several: index
shards holding disjoint items), a proxy in front that lists them as local replicas (Predict as
frames on each server's --framed_predict_socket; docs/serving.md, "A proxy beside its
shards"), the queries sent with the real
tensorflow_serving PredictionServiceStub, each query's top items printed with their head, and
every process stopped at the end, also on error.
"""
import dataclasses
import time
from typing import Callable, List, Mapping, Optional, Sequence, Union

import numpy as np
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving import tensors


@dataclasses.dataclass
class QueryResult:
    """One query's answer through the proxy.

    Attributes:
      query: the text.
      item_ids: [K] str.
      scores: [K] float32.
      heads: [K] int32 (-1 throughout for a signature without heads, such as `lexical`).
      partial: True when a shard did not answer.
      latency_ms: client-side latency of the call.
      sources: [K] "dense", "lexical", "both" or "rewrite" (hybrid servables; "lexical" or
        "rewrite" from the `lexical` signature), else empty.
    """

    query: str
    item_ids: List[str]
    scores: np.ndarray
    heads: np.ndarray
    partial: bool
    latency_ms: float
    sources: List[str] = dataclasses.field(default_factory=list)


def query_model(stub, model_name: str, queries: Sequence[str], k: int,
                timeout: float = 10.0,
                signature: str = "serving_default") -> List[QueryResult]:
    """Sends each query as its own PredictRequest ({query: [1] string, k: int32})."""
    results = []
    for query in queries:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        tensors.from_ndarray(np.array([query.encode("utf-8")], dtype=object),
                             request.inputs["query"])
        tensors.from_ndarray(np.array(k, dtype=np.int32), request.inputs["k"])
        start = time.perf_counter()
        response = stub.Predict(request, timeout=timeout)
        latency = (time.perf_counter() - start) * 1000
        outputs = {a: tensors.to_ndarray(t) for a, t in response.outputs.items()}
        ids = [i.decode("utf-8", "replace") for i in outputs["item_ids"][0]]
        partial = bool(outputs["partial"]) if "partial" in outputs else False
        sources = ([s.decode("utf-8") for s in outputs["source"][0]] if "source" in outputs
                   else [])
        heads = (outputs["heads"][0] if "heads" in outputs
                 else np.full(len(ids), -1, np.int32))
        results.append(QueryResult(query, ids, outputs["scores"][0], heads, partial, latency,
                                   sources))
    return results


def run_serving_demo(model_dirs: Union[str, Sequence[str]], queries: Sequence[str],
                     model_name: str = "dpsr", k: int = 10, show: int = 5,
                     item_text: Optional[Mapping[str, str]] = None,
                     server_flags: Sequence[str] = ("--enable_batching",),
                     out: Callable[[str], None] = print,
                     log_dir: Optional[str] = None,
                     while_up: Optional[Callable[[object], None]] = None) -> List[QueryResult]:
    """Serves exported model directories behind the proxy and prints top items per query.

    Args:
      model_dirs: a model directory (base/<model>, holding numbered versions) or one per index
        shard.
      queries: query texts.
      model_name: the name the servers and proxy use.
      k: results per query.
      show: how many of the k to print.
      item_text: optional item id -> title, printed beside each id.
      server_flags: extra `dpsr serve` flags.
      out: where lines go.
      log_dir: where process logs go (default: a temp dir).
      while_up: called with the proxy's PredictionServiceStub after the queries, before the
        servers stop (more requests, other signatures).

    Returns:
      QueryResult per query.
    """
    dirs = [model_dirs] if isinstance(model_dirs, str) else list(model_dirs)
    # On one host the proxy sends Predict to its servers as frames (local replicas).
    servers = [process.model_server_process(d, model_name, flags=server_flags,
                                            name=f"model_server_{i}", log_dir=log_dir,
                                            local=True)
               for i, d in enumerate(dirs)]
    proxy = None
    try:
        start = time.monotonic()
        process.start_all(servers)
        kind = f"{len(dirs)} index shards" if len(dirs) > 1 else "1 model server"
        out(f"model servers up ({kind}: {', '.join(s.address for s in servers)}) in "
            f"{time.monotonic() - start:.1f} s")
        proxy = process.start_proxy({model_name: tuple((s.replica,) for s in servers)},
                                    log_dir=log_dir)
        out(f"proxy up at {proxy.address} (Predict to the servers as frames on their "
            "--framed_predict_socket); querying with tensorflow_serving PredictionServiceStub")
        stub = process.prediction_stub(proxy.address)
        results = query_model(stub, model_name, queries, k)
        for r in results:
            flag = "  [PARTIAL: a shard did not answer]" if r.partial else ""
            out(f"query {r.query!r}: top {min(show, len(r.item_ids))} of {len(r.item_ids)} "
                f"({r.latency_ms:.1f} ms){flag}")
            for rank, (item, score, head) in enumerate(
                    zip(r.item_ids[:show], r.scores[:show], r.heads[:show]), start=1):
                text = f"  {item_text.get(item, '')}" if item_text else ""
                source = f"  {r.sources[rank - 1]:<7}" if r.sources else ""
                found = f"head {head}" if head >= 0 else "head -"
                out(f"  {rank:2d}. {item:<16} score {score:7.4f}{source}  {found}{text}")
        if while_up is not None:
            while_up(stub)
        return results
    finally:
        if proxy is not None:
            proxy.stop()
        for s in servers:
            s.stop()
        out("servers stopped")
