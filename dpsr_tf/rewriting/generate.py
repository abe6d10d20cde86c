"""Generating rewrites with a trained rewriter: query -> most probable title -> queries.

    rewriter = Rewriter("/models/rewriter")
    rows = rewriter.rewrite(["cordless drill"], DecodeConfig(strategy="sample", seed=1))

For each query the forward model beam-searches titles (or ranks given catalog titles, e.g. the
DPSR model's top items: title_candidates.py) and keeps the most probable one; the
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
    title: str                 # the title the rewrites were decoded from ("" if none)
    rewrites: Tuple[Rewrite, ...]


def _session_config() -> tf.compat.v1.ConfigProto:
    """The decoder's session options: grappler's remapper off. With oneDNN on (TensorFlow
    2.15's default on x86) the remapper, after constant folding of the step graph, aborts the
    process on some CPUs (seen with AVX-512 VNNI): "libprotobuf FATAL map.h CHECK failed:
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
                if direction == "forward":
                    # Teacher-forced mean log-probability of whole titles (EOS included):
                    # how the forward model ranks given candidate titles.
                    self._target = tf.compat.v1.placeholder(tf.int32, [None, None], "target")
                    logp = -tf.nn.sparse_softmax_cross_entropy_with_logits(
                        labels=self._target, logits=logits)
                    real = tf.cast(tf.not_equal(self._target, units_lib.PAD), logp.dtype)
                    self._title_score = (tf.reduce_sum(logp * real, 1)
                                         / tf.maximum(tf.reduce_sum(real, 1), 1.0))
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
                batch_size: int = 64, log: Optional[Callable[[str], None]] = print,
                titles: Optional[Sequence[Sequence[str]]] = None) -> List[QueryRewrites]:
        """Rewrites of each query (module docstring), in input order, unfiltered except for
        duplicates and empty texts.

        titles: None (the forward model generates titles by beam search) or, per query,
          candidate catalog titles (e.g. the DPSR model's top items for the query,
          dpsr_tf/rewriting/title_candidates.py): the forward model then ranks these by
          its mean log-probability and keeps the most probable, so the title the backward
          model reads is a real item's. A query with no candidate gets no rewrite.
        """
        decode.validate()
        if titles is not None and len(titles) != len(queries):
            raise ValueError(f"{len(titles)} title lists for {len(queries)} queries")
        cfg, out, start = self.config, [], time.time()
        for lo in range(0, len(queries), batch_size):
            batch = list(queries[lo:lo + batch_size])
            src = self.vocab.encode(batch, cfg.query_len)
            if titles is None:
                best_titles = self._generated_titles(src, decode.title_beam)
            else:
                best_titles = self._most_probable_titles(src, titles[lo:lo + batch_size])
            has_title = np.array([t is not None for t in best_titles])
            found = [[] for _ in batch]
            if has_title.any():
                title_ids = np.stack([t[1] for t in best_titles if t is not None])
                decoded = self._decode_rewrites(title_ids, decode, lo)
                for i, hyps in zip(np.flatnonzero(has_title), decoded):
                    found[i] = hyps
            for i, query in enumerate(batch):
                best = {}
                for h in found[i]:
                    text = self.vocab.decode(h.units)
                    if text and (text not in best or h.score > best[text]):
                        best[text] = h.score
                ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))
                title = best_titles[i][0] if best_titles[i] is not None else ""
                out.append(QueryRewrites(query, title,
                                         tuple(Rewrite(t, float(s)) for t, s in ranked)))
            if log:
                done = lo + len(batch)
                log(f"rewrite: {done}/{len(queries)} queries, "
                    f"{done / max(time.time() - start, 1e-9):.1f} queries/s")
        return out

    def _generated_titles(self, src: np.ndarray, beam: int) -> List[Tuple[str, np.ndarray]]:
        """(text, unit ids [title_len]) of the forward model's best beam-searched title."""
        title_len = self.config.title_len
        out = []
        for hyps in decoding.beam_search(self._step_fn("forward", src), len(src),
                                         title_len - 1, beam, 1):
            ids = np.full([title_len], units_lib.PAD, np.int32)
            units = list(hyps[0].units)[:title_len - 1] + [units_lib.EOS]
            ids[:len(units)] = units
            out.append((self.vocab.decode(hyps[0].units), ids))
        return out

    def title_scores(self, src: np.ndarray, title_ids: np.ndarray) -> np.ndarray:
        """[N] the forward model's mean unit log-probability of title_ids [N, title_len]
        (EOS-terminated, PAD-padded) given src [N, query_len]."""
        prefix = np.concatenate([np.full([len(title_ids), 1], units_lib.BOS, np.int32),
                                 title_ids[:, :-1]], axis=1)
        return self._session.run(self._title_score, {
            self._source: src, self._prefix: prefix, self._target: title_ids})

    def _most_probable_titles(self, src: np.ndarray, candidates: Sequence[Sequence[str]]
                              ) -> List[Optional[Tuple[str, np.ndarray]]]:
        """Per query, (text, unit ids) of its candidate title the forward model finds most
        probable (the first on ties), or None when it has no candidate."""
        owner = [i for i, ts in enumerate(candidates) for _ in ts]
        flat = [t for ts in candidates for t in ts]
        out: List[Optional[Tuple[str, np.ndarray]]] = [None] * len(candidates)
        if not flat:
            return out
        ids = self.vocab.encode(flat, self.config.title_len)
        scores = self.title_scores(src[owner], ids)
        best = {}
        for j, (i, s) in enumerate(zip(owner, scores)):
            if i not in best or s > scores[best[i]]:
                best[i] = j
        for i, j in best.items():
            out[i] = (flat[j], ids[j])
        return out

    def _decode_rewrites(self, title_ids: np.ndarray, decode: DecodeConfig,
                         seed_offset: int) -> List[List[decoding.Hypothesis]]:
        """The backward model's hypotheses from each row of title_ids [N, title_len]."""
        backward = self._step_fn("backward", title_ids, decode.no_repeat)
        n, max_len = len(title_ids), self.config.query_len - 1
        if decode.strategy == "greedy":
            return [[h] for h in decoding.greedy(backward, n, max_len)]
        if decode.strategy == "beam":
            return decoding.beam_search(backward, n, max_len, decode.num_rewrites,
                                        decode.num_rewrites)
        return decoding.sample(backward, n, max_len, decode.num_rewrites,
                               decode.seed + seed_offset, decode.top_k, decode.top_p,
                               decode.temperature)


def same_units(a: str, b: str) -> bool:
    """Whether two texts have the same set of units (case, punctuation, order and repeats
    aside): BM25 ranks them alike, so such a rewrite adds nothing."""
    ka, kb = units_lib.unit_keys([a, b])
    return set(ka) == set(kb)


def filter_rewrites(rows: Sequence[QueryRewrites], has_hits: Optional[Callable[[List[str]],
                    np.ndarray]] = None, max_rewrites: int = 0,
                    shared: Optional[Callable[[str, List[str]], np.ndarray]] = None,
                    min_shared: int = 0,
                    finds_title: Optional[Callable[[str, List[str]], np.ndarray]] = None
                    ) -> List[QueryRewrites]:
    """Drops rewrites with the query's own units and, given has_hits (texts -> [n] bool: the
    lexical index finds at least one item), rewrites with no lexical hit; given finds_title
    ((title, texts) -> [n] bool, lexical_filter.lexical_cycle_fn), rewrites that do not find
    the item whose title they were decoded from (the cycle filter); given shared
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
        if finds_title is not None and kept:
            found = finds_title(row.title, [r.text for r in kept])
            kept = [r for r, ok in zip(kept, found) if ok]
        if shared is not None and min_shared > 0 and kept:
            counts = shared(row.query, [r.text for r in kept])
            kept = [r for r, c in zip(kept, counts) if c >= min_shared]
        if max_rewrites:
            kept = kept[:max_rewrites]
        out.append(dataclasses.replace(row, rewrites=tuple(kept)))
    return out
