"""Large unbatched requests run as several session runs of a few rows each, one after another.

A started session run cannot be stopped: a client that sends 256-row requests and cancels them (or
lets their deadline pass; or a hedged call whose other copy answered first) still has every started
one computed to the end. Run in chunks of `chunk_rows` rows, such a request stops after the chunk in
progress once its caller gave up or its deadline passed, so abandoned work is bounded by one chunk
per run thread. Rows are independent in a batchable signature (every output is batch-major, the
condition the batcher relies on too), so the chunks' outputs stacked along dim 0 are the whole
request's answer. By default (`dpsr serve --max_rows_per_run=-1`, AUTO) only servables written by
`dpsr export` run in chunks of AUTO_CHUNK_ROWS: their rows are independent by construction (each
row's query is encoded and searched alone), which the export records in
assets.extra/dpsr_servable.json. Any other model keeps TF Serving's one run per request unless
--max_rows_per_run is given: a model whose rows are not independent (a softmax across the batch)
would answer differently, as it would under --enable_batching. Chunks of AUTO_CHUNK_ROWS rows
together cost about what one run of the whole request does (docs/benchmarks.md, "Large requests in
chunks").

One condition the signature cannot state: every chunk's outputs must have the same trailing
dimensions (a DPSR servable's [rows, k] lists do; a model whose output width follows the
longest input of its batch might not). Where they differ, the request is run again whole and
the signature is never chunked again (ChunkedRuns.unchunkable).
"""
import logging
import threading
import time
from typing import Callable, Dict, Hashable, Optional, Sequence, Tuple

import grpc
import numpy as np

from dpsr_tf.serving.errors import ServingError

_LOG = logging.getLogger("serving.chunked_runs")


Run = Callable[[Dict[str, np.ndarray], Optional[float]], Dict[str, np.ndarray]]

AUTO = -1  # chunk_rows: AUTO_CHUNK_ROWS for servables whose rows are known independent, else 0
AUTO_CHUNK_ROWS = 32  # small enough to bound abandoned work, large enough to cost no more


class ChunkedRuns:
    """Makes the run of a large request a run in chunks (per server; remembers signatures whose
    chunks did not stack).

    Args:
      chunk_rows: most rows per session run (0: never chunk; AUTO: AUTO_CHUNK_ROWS for
        servables whose rows are independent, never for others).
    """

    def __init__(self, chunk_rows: int):
        if chunk_rows < AUTO:
            raise ValueError(f"rows per run must be >= 0 (0: one run per request) or {AUTO} "
                             f"(auto), got {chunk_rows}")
        self.chunk_rows = chunk_rows
        self._unchunkable = set()
        self._lock = threading.Lock()

    def unchunkable(self, key: Hashable) -> bool:
        return key in self._unchunkable

    def rows_per_run(self, rows_independent: bool) -> int:
        """The chunk size for a servable (0: one run per request)."""
        if self.chunk_rows == AUTO:
            return AUTO_CHUNK_ROWS if rows_independent else 0
        return self.chunk_rows

    def wrap(self, key: Hashable, run: Run, rows: Optional[int], batched: Sequence[str],
             batchable: bool, rows_independent: bool = False
             ) -> Optional[Tuple[Run, threading.Event]]:
        """(a run(feeds, timeout_s) that runs `run` on chunks of the request's rows, the event
        that stops it before its next chunk: set it when the caller gives up), or None when
        the request runs whole (small, not batch-major, or `key` unchunkable).

        Args:
          key: the signature (of one servable version) the request runs.
          run: run(feeds, timeout_s) -> alias -> ndarray, one session run.
          rows: the request's rows along dim 0 (None: not batch-major).
          batched: the aliases split along dim 0 (the others are fed whole to every chunk).
          batchable: every output of the signature is batch-major.
          rows_independent: the servable says its rows are independent (for AUTO).
        """
        chunk_rows = self.rows_per_run(rows_independent)
        if (not chunk_rows or rows is None or rows <= chunk_rows or not batchable
                or key in self._unchunkable):
            return None
        stop = threading.Event()

        def chunked(feeds, timeout_s):
            start = time.monotonic()
            parts = []
            for first in range(0, rows, chunk_rows):
                if stop.is_set():
                    raise ServingError(grpc.StatusCode.CANCELLED,
                                       f"request cancelled after {first} of {rows} rows")
                left = None if timeout_s is None else timeout_s - (time.monotonic() - start)
                if left is not None and left <= 0:
                    raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                       f"deadline exceeded after {first} of {rows} rows")
                part = {alias: value[first:first + chunk_rows] if alias in batched else value
                        for alias, value in feeds.items()}
                parts.append(run(part, left))
            stacked = _stack(parts)
            if stacked is not None:
                return stacked
            with self._lock:
                self._unchunkable.add(key)
            _LOG.warning("the outputs of %s differ in width from chunk to chunk: its requests "
                         "run whole from now on", key)
            if stop.is_set():
                raise ServingError(grpc.StatusCode.CANCELLED,
                                   f"request cancelled after {rows} of {rows} rows")
            left = None if timeout_s is None else max(0.001, timeout_s - (time.monotonic() -
                                                                            start))
            return run(feeds, left)

        return chunked, stop


def _stack(parts) -> Optional[Dict[str, np.ndarray]]:
    """The chunks' outputs concatenated along dim 0; None when an output's trailing
    dimensions differ between chunks."""
    out = {}
    for alias in parts[0]:
        values = [p[alias] for p in parts]
        if any(v.ndim == 0 or v.shape[1:] != values[0].shape[1:] for v in values):
            return None
        out[alias] = np.concatenate(values, axis=0)
    return out
