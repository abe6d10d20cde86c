"""The lexical (BM25) index: its scores against numpy and bm25s on identical token streams,
sharding, the TF op against the pybind11 module, damaged files, and the fusion rules against a
plain-Python reference."""
import os

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.tokenization.tokenizer import Tokenizer
from dpsr_tf.search import fusion, lexical_ops
from dpsr_tf.indexing import index_layout, lexical_index
from dpsr_tf.indexing.lexical_manifest import LexicalConfig

WORDS = [f"w{i}" for i in range(40)]


def corpus(n, seed):
    rng = np.random.default_rng(seed)
    # Zipf-like word choice so df varies; lengths 1..12 so length normalization matters.
    p = 1.0 / np.arange(1, len(WORDS) + 1)
    p /= p.sum()
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 13), p=p)) for _ in range(n)]


def numpy_bm25(doc_tokens, query_tokens, k1=1.5, b=0.75):
    """[Q, N] BM25 (Lucene idf) by hand, from token lists: the independent reference."""
    n = len(doc_tokens)
    avgdl = sum(len(d) for d in doc_tokens) / n
    df = {}
    for d in doc_tokens:
        for t in set(d):
            df[t] = df.get(t, 0) + 1
    out = np.zeros((len(query_tokens), n))
    for qi, q in enumerate(query_tokens):
        for t in q:  # a repeated query term counts per occurrence
            if t not in df:
                continue
            idf = np.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            for di, d in enumerate(doc_tokens):
                tf_ = d.count(t)
                if tf_:
                    out[qi, di] += idf * tf_ / (tf_ + k1 * (1 - b + b * len(d) / avgdl))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A catalog of 300 titles in a 1-shard and a 3-shard build directory."""
    titles = corpus(300, seed=1) + ["", "中文 商品 w1"]
    ids = [f"item{i}" for i in range(len(titles))]
    out = {}
    for shards in (1, 3):
        directory = str(tmp_path_factory.mktemp(f"lex{shards}"))
        assign = index_layout.shard_assignments(ids, shards)
        infos = []
        for s in range(shards):
            os.makedirs(os.path.join(directory, index_layout.shard_dir_name(s)))
            shard_ids = [i for i, a in zip(ids, assign) if a == s]
            index_layout.write_id_map(os.path.join(directory, index_layout.shard_dir_name(s),
                                                   index_layout.IDS_FILE), shard_ids)
            infos.append(index_layout.ShardInfo(s, f"{index_layout.shard_dir_name(s)}/x.faiss",
                                                f"{index_layout.shard_dir_name(s)}/ids.txt",
                                                len(shard_ids), 0))
        manifest = index_layout.IndexManifest("Flat", "inner_product", 4, len(ids), shards,
                                              index_layout.SHARDING_RULE, tuple(infos))
        lexical = lexical_index.build_lexical_shards(directory, manifest, ids, titles,
                                                     log=lambda m: None)
        # The manifest round-trips with its lexical section.
        text = index_layout.IndexManifest(**{**manifest.__dict__, "lexical": lexical}).to_json()
        assert index_layout.IndexManifest.from_json(text).lexical == lexical
        out[shards] = (directory, manifest, lexical)
    return {"titles": titles, "ids": ids, "dirs": out}


def searcher(built, shards):
    directory, manifest, lexical = built["dirs"][shards]
    s = object.__new__(lexical_index.LexicalSearcher)  # no manifest.json on disk here
    s.manifest = manifest
    s.tokenizer = Tokenizer(lexical.config.tokenizer_config())
    row_of = {i: r for r, i in enumerate(built["ids"])}
    native = lexical_index._native()  # pylint: disable=protected-access
    s.indexes, s.rows = [], []
    for info, lex in zip(manifest.shards, lexical.shards):
        ids = index_layout.read_id_map(os.path.join(directory, info.ids_file))
        s.indexes.append(native.LexicalIndex(os.path.join(directory, lex.file)))
        s.rows.append(np.array([row_of[i] for i in ids], np.int64))
    s.num_items = len(built["ids"])
    return s


QUERIES = ["w1 w7", "w3 w3 w30", "w39", "nothing here", "中文 w1"]


def token_streams(built):
    tok = Tokenizer(LexicalConfig().tokenizer_config())
    values, splits = tok.tokenize(built["titles"])
    docs = [values[splits[i]:splits[i + 1]].tolist() for i in range(len(built["titles"]))]
    qv, qs = tok.tokenize(QUERIES)
    queries = [qv[qs[i]:qs[i + 1]].tolist() for i in range(len(QUERIES))]
    return docs, queries


def test_scores_equal_numpy_and_bm25s_on_the_same_token_streams(built):
    bm25s = pytest.importorskip("bm25s")
    docs, queries = token_streams(built)
    expected = numpy_bm25(docs, queries)
    got = searcher(built, 1).score_all(QUERIES)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    retriever = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    retriever.index([[str(t) for t in d] for d in docs], show_progress=False)
    vocab = retriever.vocab_dict
    for qi, q in enumerate(queries):
        tokens = [str(t) for t in q if str(t) in vocab]
        if tokens:
            np.testing.assert_allclose(got[qi], retriever.get_scores(tokens), atol=1e-5)
        else:
            assert not got[qi].any()


def test_search_is_the_top_k_of_the_scores_and_shards_score_as_one(built):
    docs, queries = token_streams(built)
    expected = numpy_bm25(docs, queries)
    for shards in (1, 3):
        scores, rows = searcher(built, shards).search(QUERIES, k=20)
        for qi in range(len(QUERIES)):
            positive = np.flatnonzero(expected[qi] > 0)
            order = positive[np.lexsort((positive, -expected[qi][positive]))][:20]
            n = len(order)
            np.testing.assert_array_equal(rows[qi, :n], order)
            np.testing.assert_allclose(scores[qi, :n], expected[qi][order], atol=1e-5)
            assert (rows[qi, n:] == -1).all() and np.isneginf(scores[qi, n:]).all()
    assert (searcher(built, 1).search(["nothing here"], 5)[1] == -1).all()


def test_tf_op_equals_the_pybind_module(built):
    directory, manifest, lexical = built["dirs"][3]
    tok_cfg = lexical.config.tokenizer_config()
    from dpsr_tf.tokenization import tokenize_op  # pylint: disable=import-outside-toplevel
    tokens = tokenize_op.tokenize(tf.constant(QUERIES), tok_cfg)
    native = lexical_index._native()  # pylint: disable=protected-access
    values, splits = Tokenizer(tok_cfg).tokenize(QUERIES)
    for lex in lexical.shards:
        path = os.path.join(directory, lex.file)
        index = lexical_ops.LexicalIndex(path)
        scores, labels = lexical_ops.search(index, tokens, 7, min_score=0.5)
        want_s, want_l = native.LexicalIndex(path).search(values, splits, 7, 0.5)
        np.testing.assert_array_equal(labels.numpy(), want_l)
        np.testing.assert_array_equal(scores.numpy(), want_s)
        assert scores.shape == (len(QUERIES), 7)
        info = lexical_ops.index_info(index)
        assert int(info.num_terms) == lex.num_terms and int(info.num_postings) == lex.num_postings


def test_damaged_files_are_clear_errors(built, tmp_path):
    directory, _, lexical = built["dirs"][1]
    good = open(os.path.join(directory, lexical.shards[0].file), "rb").read()
    native = lexical_index._native()  # pylint: disable=protected-access
    cases = {"truncated": good[:-100], "garbage": os.urandom(len(good)),
             "flipped": good[:200] + bytes([good[200] ^ 1]) + good[201:], "empty": b""}
    for name, data in cases.items():
        path = str(tmp_path / f"{name}.idx")
        with open(path, "wb") as f:
            f.write(data)
        with pytest.raises(ValueError, match=path):
            native.LexicalIndex(path)
        with pytest.raises(tf.errors.InvalidArgumentError, match=path):
            lexical_ops.LexicalIndex(path)
    with pytest.raises(tf.errors.NotFoundError):
        lexical_ops.LexicalIndex(str(tmp_path / "missing.idx"))
    with pytest.raises(FileNotFoundError):
        native.LexicalIndex(str(tmp_path / "missing.idx"))
    index = lexical_ops.LexicalIndex(os.path.join(directory, lexical.shards[0].file))
    with pytest.raises(ValueError, match="k must be in"):
        lexical_ops.search(index, tf.ragged.constant([[1]], tf.int64), 0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature ids; at most"):
        lexical_ops.search(index, tf.ragged.constant([[1] * 5000], tf.int64), 3)


# ----------------------------------------------------------------------------------------------
# Fusion against a plain-Python reference.

def reference_fuse(dense, lexical, k, cfg):
    """dense/lexical: lists of (id, score) best first. The rule written out directly."""
    def contributions(entries, weight):
        if cfg.rule == "rrf":  # a tie shares the rank: 1 + the number of strictly better
            return {i: weight / (cfg.rrf_k + 1 + sum(t > s for _, t in entries))
                    for i, s in entries}
        if not entries:
            return {}
        lo, hi = min(s for _, s in entries), max(s for _, s in entries)
        return {i: weight * ((s - lo) / (hi - lo) if hi > lo else 1.0) for i, s in entries}
    d = contributions(dense, cfg.dense_weight)
    lx = contributions(lexical, cfg.lexical_weight)
    order = [i for i, _ in dense] + [i for i, _ in lexical if i not in d]
    fused = {i: d.get(i, 0.0) + lx.get(i, 0.0) for i in order}
    ranked = sorted(range(len(order)), key=lambda p: (-fused[order[p]], p))[:k]
    return [(order[p], fused[order[p]], (i in d) + 2 * (i in lx))
            for p, i in ((p, order[p]) for p in ranked)]


def random_lists(seed, batch=6, kd=12, kl=9, universe=30):
    rng = np.random.default_rng(seed)
    ds = np.full((batch, kd), -np.inf, np.float32)
    dl = np.full((batch, kd), -1, np.int64)
    ls = np.full((batch, kl), -np.inf, np.float32)
    ll = np.full((batch, kl), -1, np.int64)
    for b in range(batch):
        nd, nl = rng.integers(0, kd + 1), rng.integers(0, kl + 1)
        dl[b, :nd] = rng.choice(universe, nd, replace=False)
        ds[b, :nd] = np.sort(np.round(rng.random(nd), 1).astype(np.float32))[::-1]  # ties
        ll[b, :nl] = rng.choice(universe, nl, replace=False)
        ls[b, :nl] = np.sort(np.round(rng.random(nl) * 5).astype(np.float32))[::-1]
    return ds, dl, ls, ll


@pytest.mark.parametrize("cfg", [fusion.FusionConfig(),
                                 fusion.FusionConfig(rrf_k=5, dense_weight=2.0,
                                                     lexical_weight=0.5),
                                 fusion.FusionConfig(rule="blend", lexical_weight=0.7)])
def test_fusion_numpy_and_tf_equal_the_reference(cfg):
    ds, dl, ls, ll = random_lists(seed=3)
    k = 15
    np_s, np_l, np_src = fusion.fuse_np(ds, dl, ls, ll, k, cfg)
    heads = (dl % 3).astype(np.int32)
    tf_out = fusion.fuse(tf.constant(ds), tf.constant(dl), tf.constant(ls), tf.constant(ll),
                         tf.constant(k), cfg, dense_heads=tf.constant(heads))
    for b in range(ds.shape[0]):
        dense = [(int(i), float(s)) for i, s in zip(dl[b], ds[b]) if i >= 0]
        lexical = [(int(i), float(s)) for i, s in zip(ll[b], ls[b]) if i >= 0]
        want = reference_fuse(dense, lexical, k, cfg)
        n = len(want)
        for got_s, got_l, got_src in ((np_s, np_l, np_src),
                                      (tf_out["scores"].numpy(), tf_out["labels"].numpy(),
                                       tf_out["source"].numpy())):
            assert got_l[b, :n].tolist() == [i for i, _, _ in want]
            np.testing.assert_allclose(got_s[b, :n], [s for _, s, _ in want], rtol=1e-6)
            assert got_src[b, :n].tolist() == [src for _, _, src in want]
            assert (got_l[b, n:] == -1).all() and np.isneginf(got_s[b, n:]).all()
        dense_of = dict(dense)
        lex_of = dict(lexical)
        for j, (i, _, _) in enumerate(want):
            assert tf_out["dense_scores"].numpy()[b, j] == dense_of.get(i, -np.inf)
            assert tf_out["lexical_scores"].numpy()[b, j] == lex_of.get(i, -np.inf)
            assert tf_out["heads"].numpy()[b, j] == (i % 3 if i in dense_of else -1)


@pytest.mark.parametrize("rule", ["rrf", "blend"])
def test_proxy_refusion_of_shards_equals_fusing_the_global_lists(rule):
    cfg = fusion.FusionConfig(rule=rule)
    ds, dl, ls, ll = random_lists(seed=5, kd=10, kl=10)
    k = 20
    want_s, want_l, _ = fusion.fuse_np(ds, dl, ls, ll, k, cfg)
    # Split items into two shards by parity; each shard fuses its own sub-lists completely,
    # then the pool is re-fused by the per-list scores every entry carries.
    pool_d, pool_l, pool_ids = [], [], []
    for shard in (0, 1):
        keep_d = np.where(dl % 2 == shard, dl, -1)
        keep_l = np.where(ll % 2 == shard, ll, -1)
        sd = np.where(keep_d >= 0, ds, -np.inf)
        sl = np.where(keep_l >= 0, ls, -np.inf)
        _, ids, _ = fusion.fuse_np(sd, keep_d, sl, keep_l, k, cfg)
        dmap = [dict(zip(keep_d[b], sd[b])) for b in range(len(ids))]
        lmap = [dict(zip(keep_l[b], sl[b])) for b in range(len(ids))]
        pool_ids.append(ids)
        pool_d.append(np.array([[dmap[b].get(i, -np.inf) if i >= 0 else -np.inf for i in row]
                                for b, row in enumerate(ids)], np.float32))
        pool_l.append(np.array([[lmap[b].get(i, -np.inf) if i >= 0 else -np.inf for i in row]
                                for b, row in enumerate(ids)], np.float32))
    ids = np.concatenate(pool_ids, 1)
    fused = fusion.refuse_np(np.concatenate(pool_d, 1), np.concatenate(pool_l, 1), cfg)
    for b in range(ids.shape[0]):
        valid = ids[b] >= 0
        got = sorted(zip(-fused[b][valid], ids[b][valid].tolist()))
        want = [(float(-s), int(i)) for s, i in zip(want_s[b], want_l[b]) if i >= 0]
        np.testing.assert_allclose([s for s, _ in got], [s for s, _ in want], rtol=1e-6)
        assert {i for _, i in got} == {i for _, i in want}


def test_fusion_config_is_validated():
    for bad in (dict(rule="max"), dict(rrf_k=0), dict(dense_weight=-1),
                dict(dense_weight=0, lexical_weight=0), dict(lexical_k=-1)):
        with pytest.raises(ValueError):
            fusion.FusionConfig(**bad).validate()
    cfg = fusion.FusionConfig(rule="blend", rrf_k=10)
    assert fusion.FusionConfig.from_json(cfg.to_json()) == cfg


def test_proxy_merge_of_hybrid_shard_answers_refuses_them():
    """dpsr_tf.serving.proxy.merge.merge_topk on two hybrid shard answers ranks by the re-fused pool."""
    from dpsr_tf.serving.proxy import merge  # pylint: disable=import-outside-toplevel
    cfg = fusion.FusionConfig(rrf_k=60, lexical_weight=1.0)
    rule = np.array([cfg.to_json().encode()], object)
    # Shard A holds a, b; shard B holds c. Dense: a 0.9 > c 0.8 > b 0.1; lexical: c 9 > b 5.
    shard_a = {"item_ids": np.array([[b"a", b"b"]], object),
               "scores": np.array([[1 / 61, 1 / 61]], np.float32),   # shard-local ranks
               "dense_scores": np.array([[0.9, 0.1]], np.float32),
               "lexical_scores": np.array([[-np.inf, 5.0]], np.float32),
               "source": np.array([[b"dense", b"both"]], object), "fusion_rule": rule}
    shard_b = {"item_ids": np.array([[b"c", b""]], object),
               "scores": np.array([[2 / 61, -np.inf]], np.float32),
               "dense_scores": np.array([[0.8, -np.inf]], np.float32),
               "lexical_scores": np.array([[9.0, -np.inf]], np.float32),
               "source": np.array([[b"both", b""]], object), "fusion_rule": rule}
    merged = merge.merge_topk([shard_a, shard_b], k=3)
    # Global dense ranks a1 c2 b3, lexical c1 b2: c = 1/62 + 1/61, b = 1/63 + 1/62, a = 1/61.
    assert merged["item_ids"][0].tolist() == [b"c", b"b", b"a"]
    np.testing.assert_allclose(merged["scores"][0], [1 / 62 + 1 / 61, 1 / 63 + 1 / 62, 1 / 61],
                               rtol=1e-6)
    assert merged["source"][0].tolist() == [b"both", b"both", b"dense"]
