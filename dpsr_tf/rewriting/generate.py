"""Generating rewrites with a trained rewriter: query -> most probable title -> queries.

    rewriter = Rewriter("/models/rewriter")
    rows = rewriter.rewrite(["cordless drill"], DecodeConfig(strategy="sample", seed=1))

For each query the forward model beam-searches titles and keeps the most probable one; the
backward model decodes num_rewrites queries from that title with the chosen strategy (greedy,
beam or top-k/nucleus sampling, dpsr_tf/rewriting/decoding.py). Candidates are deduplicated
by text (the best score kept) and ranked by the backward model's mean unit log-probability.
Filters (RewriteFilter) then drop what cannot help recall.
"""
import dataclasses
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from dpsr_tf.rewriting import decoding
from dpsr_tf.rewriting import model as model_lib
from dpsr_tf.rewriting import units as units_lib
from dpsr_tf.rewriting.train import load_rewriter

STRATEGIES = ("greedy", "beam", "sample")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How rewrites are decoded.

    Attributes:
      strategy: of the backward model: "greedy" (one rewrite), "beam" or "sample".
      num_rewrites: candidates decoded per query (beam: beam width and returned hypotheses).
      title_beam: beam width of the forward model's title search (the best title is kept).
      top_k, top_p, temperature, seed: sampling settings (decoding.sample).
      no_repeat: a rewrite never repeats a unit (BM25 gains nothing from a repeated word, and
        a small model otherwise loops on its most likely one).
    """
    strategy: str = "sample"
    num_rewrites: int = 8
    title_beam: int = 4
    top_k: int = 20
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 0
    no_repeat: bool = True

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.num_rewrites < 1 or self.title_beam < 1:
            raise ValueError(f"num_rewrites and title_beam must be >= 1, got "
                             f"{self.num_rewrites}, {self.title_beam}")


@dataclasses.dataclass(frozen=True)
class Rewrite:
    text: str
    score: float     # backward model's mean log-probability per unit (<= 0)


@dataclasses.dataclass(frozen=True)
class QueryRewrites:
    query: str
    title: str                 # the forward model's most probable title
    rewrites: Tuple[Rewrite, ...]


def _session_config() -> tf.compat.v1.ConfigProto:
    """The decoder's session options: grappler's remapper off. With oneDNN on (TensorFlow
    2.15's default on x86) the remapper, after constant folding of the step graph, aborts the
    process on some CPUs (this one has AVX-512 VNNI): "libprotobuf FATAL map.h CHECK failed:
    key not found: value", then SIGSEGV. Its fusions are only a speed-up for this small graph."""
    rewrite = rewriter_config_pb2.RewriterConfig(
        remapping=rewriter_config_pb2.RewriterConfig.OFF)
    return tf.compat.v1.ConfigProto(graph_options=tf.compat.v1.GraphOptions(
        rewrite_options=rewrite))


class Rewriter:
    """A trained rewriter restored into its own graph and session (not thread-safe)."""

    def __init__(self, model_dir: str, checkpoint: Optional[str] = None):
        self.config, self.vocab, _ = load_rewriter(model_dir)
        ckpt = checkpoint or tf.train.latest_checkpoint(model_dir)
        if not ckpt:
            raise FileNotFoundError(f"{model_dir} has no checkpoint; train it first")
        self.checkpoint = ckpt
        cfg = self.config
        self._graph = tf.Graph()
        with self._graph.as_default():
            self._source = tf.compat.v1.placeholder(tf.int32, [None, None], "source")
            self._prefix = tf.compat.v1.placeholder(tf.int32, [None, None], "prefix")
            self._next = {}
            for direction in ("forward", "backward"):
                logits = model_lib.translate_logits(self._source, self._prefix, cfg, direction)
                self._next[direction] = tf.nn.log_softmax(logits[:, -1, :])
            saver = tf.compat.v1.train.Saver()
            self._session = tf.compat.v1.Session(graph=self._graph, config=_session_config())
            saver.restore(self._session, ckpt)

    def _step_fn(self, direction: str, sources: np.ndarray,
                 no_repeat: bool = False) -> decoding.StepFn:
        def step(rows, prefixes):
            logp = self._session.run(self._next[direction], {
                self._source: sources[rows], self._prefix: prefixes}).astype(np.float64)
            if no_repeat:
                # Units already in a prefix (BOS and PAD are masked by decoding anyway).
                np.put_along_axis(logp, prefixes.astype(np.int64), -np.inf, axis=1)
            return logp
        return step

    def rewrite(self, queries: Sequence[str], decode: DecodeConfig = DecodeConfig(),
                batch_size: int = 64,
                log: Optional[Callable[[str], None]] = print) -> List[QueryRewrites]:
        """Rewrites of each query (module docstring), in input order, unfiltered except for
        duplicates and empty texts."""
        decode.validate()
        cfg, out, start = self.config, [], time.time()
        for lo in range(0, len(queries), batch_size):
            batch = list(queries[lo:lo + batch_size])
            src = self.vocab.encode(batch, cfg.query_len)
            titles = decoding.beam_search(self._step_fn("forward", src), len(batch),
                                          cfg.title_len - 1, decode.title_beam, 1)
            title_ids = np.full([len(batch), cfg.title_len], units_lib.PAD, np.int32)
            for i, hyps in enumerate(titles):
                ids = list(hyps[0].units)[:cfg.title_len - 1] + [units_lib.EOS]
                title_ids[i, :len(ids)] = ids
            backward = self._step_fn("backward", title_ids, decode.no_repeat)
            n, max_len = len(batch), cfg.query_len - 1
            if decode.strategy == "greedy":
                found = [[h] for h in decoding.greedy(backward, n, max_len)]
            elif decode.strategy == "beam":
                found = decoding.beam_search(backward, n, max_len, decode.num_rewrites,
                                             decode.num_rewrites)
            else:
                found = decoding.sample(backward, n, max_len, decode.num_rewrites,
                                        decode.seed + lo, decode.top_k, decode.top_p,
                                        decode.temperature)
            for i, query in enumerate(batch):
                best = {}
                for h in found[i]:
                    text = self.vocab.decode(h.units)
                    if text and (text not in best or h.score > best[text]):
                        best[text] = h.score
                ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))
                out.append(QueryRewrites(query, self.vocab.decode(titles[i][0].units),
                                         tuple(Rewrite(t, float(s)) for t, s in ranked)))
            if log:
                done = lo + len(batch)
                log(f"rewrite: {done}/{len(queries)} queries, "
                    f"{done / max(time.time() - start, 1e-9):.1f} queries/s")
        return out


def same_units(a: str, b: str) -> bool:
    """Whether two texts have the same set of units (case, punctuation, order and repeats
    aside): BM25 ranks them alike, so such a rewrite adds nothing."""
    ka, kb = units_lib.unit_keys([a, b])
    return set(ka) == set(kb)


def filter_rewrites(rows: Sequence[QueryRewrites], has_hits: Optional[Callable[[List[str]],
                    np.ndarray]] = None, max_rewrites: int = 0,
                    shared: Optional[Callable[[str, List[str]], np.ndarray]] = None,
                    min_shared: int = 0) -> List[QueryRewrites]:
    """Drops rewrites with the query's own units and, given has_hits (texts -> [n] bool: the
    lexical index finds at least one item), rewrites with no lexical hit; given shared
    ((query, texts) -> [n] items the rewrite's lexical top k shares with the query's own,
    lexical_filter.lexical_shared_fn) and min_shared > 0, rewrites sharing fewer than
    min_shared (the query-consistency filter: a rewrite whose results have nothing in common
    with the query's has left its topic); keeps the best max_rewrites (0 = all)."""
    out = []
    for row in rows:
        kept = [r for r in row.rewrites if not same_units(r.text, row.query)]
        if has_hits is not None and kept:
            hits = has_hits([r.text for r in kept])
            kept = [r for r, ok in zip(kept, hits) if ok]
        if shared is not None and min_shared > 0 and kept:
            counts = shared(row.query, [r.text for r in kept])
            kept = [r for r, c in zip(kept, counts) if c >= min_shared]
        if max_rewrites:
            kept = kept[:max_rewrites]
        out.append(dataclasses.replace(row, rewrites=tuple(kept)))
    return out
