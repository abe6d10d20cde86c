"""`dpsr index` + `dpsr export` end to end: the servable answers query text with the item ids
that numpy brute force finds over its own item embeddings, after a move and in a fresh process."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.indexing import catalog_index
from dpsr_tf.indexing.index_builder import IndexBuildConfig
from dpsr_tf.export.saved_model_export import export_servable
from dpsr_tf.export.servable_graph import ServableConfig
from tests.support.fresh_python import run_fresh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUERIES = ["cat3 brand5", "w17 w203", "brand1 w99 cat0", "ЖЖ 中文 nothing known"]


@pytest.fixture(scope="module")
def servable(tmp_path_factory, tiny_history_model, tiny_flat_index):
    """A DPSR-h model (2 heads, user profile + history), a Flat index, one exported version."""
    work = tmp_path_factory.mktemp("export")
    spec, model_dir = tiny_history_model.spec, tiny_history_model.model_dir
    index_dir = tiny_flat_index
    path = export_servable(model_dir, index_dir, str(work / "a" / "dpsr"),
                           servable=ServableConfig(default_k=5, max_k=50, hybrid=False))
    # The servable must not need anything outside its own directory.
    moved = str(work / "b")
    shutil.move(str(work / "a"), moved)
    return {"spec": spec, "work": work, "model_dir": model_dir, "index_dir": index_dir,
            "version_dir": os.path.join(moved, "dpsr", os.path.basename(path))}


LOAD_TF1 = """
    import json, numpy as np, tensorflow as tf
    from tests.support.tf1_servable import Tf1Servable
    call = Tf1Servable({path!r}).call
"""


def _dense_answers(servable, base: str, queries, k: int) -> dict:
    """{"ids", "scores"} of the same model exported dense only (max_k 1000) under `base`,
    called in a fresh process: the reference of the hybrid tests."""
    path = export_servable(servable["model_dir"], servable["index_dir"], base,
                           servable=ServableConfig(max_k=1000, hybrid=False))
    return run_fresh(LOAD_TF1.format(path=path) + f"""
    out = call("serving_default", {{"query": {queries!r}, "k": {k}}}, ["item_ids", "scores"])
    print(json.dumps({{"ids": out["item_ids"].astype(str).tolist(),
                      "scores": out["scores"].tolist()}}))
    """)


def test_servable_equals_brute_force_after_move_in_fresh_process(servable):
    spec = servable["spec"]
    items = layout_lib.load_item_table(spec)
    feeds = {"item_title": items.titles}
    feeds.update({f"item_{n}": [items.vocabularies[n][i] for i in items.feature(n)]
                  for n in spec.item_features})
    script = LOAD_TF1.format(path=servable["version_dir"]) + f"""
    items = call("item_embedding", {feeds!r}, ["embedding"])["embedding"]
    q = call("query_embedding", {{"query": {QUERIES!r}}}, ["embedding"])["embedding"]
    out = call("serving_default", {{"query": {QUERIES!r}, "k": 7}},
               ["item_ids", "scores", "heads"])
    print(json.dumps({{"items": items.tolist(), "q": q.tolist(),
                      "ids": out["item_ids"].astype(str).tolist(),
                      "scores": out["scores"].tolist(), "heads": out["heads"].tolist()}}))
    """
    got = run_fresh(script)
    item_emb = np.array(got["items"], np.float32)            # [N, d]
    q = np.array(got["q"], np.float32)                       # [Q, m, d]
    # The servable's item tower equals the embeddings the index was built from.
    built, built_ids = catalog_index.load_catalog_embeddings(servable["index_dir"])
    np.testing.assert_allclose(item_emb, built, atol=1e-5)
    assert list(built_ids) == items.ids
    # Brute force: an item's score is its best head's inner product; top 7 by that score.
    per_head = np.einsum("qmd,nd->qmn", q, item_emb)         # [Q, m, N]
    best = per_head.max(axis=1)
    best_head = per_head.argmax(axis=1)
    for row in range(len(QUERIES)):
        order = np.argsort(-best[row], kind="stable")[:7]
        np.testing.assert_allclose(got["scores"][row], best[row][order], atol=1e-5)
        want_ids = [items.ids[i] for i in order]
        # Equal ids, except where two items tie within float error.
        for j, (g, w) in enumerate(zip(got["ids"][row], want_ids)):
            if g != w:
                assert abs(best[row][items.ids.index(g)] - best[row][order[j]]) < 1e-5
        assert got["heads"][row] == [int(best_head[row][items.ids.index(g)])
                                     for g in got["ids"][row]]


def test_tf2_loader(servable):
    # TF2's loader wraps TF1 signatures without their defaults: every input must be given.
    script = f"""
    import json, tensorflow as tf
    from dpsr_tf import op_library
    op_library.load()
    m = tf.saved_model.load({servable["version_dir"]!r})
    out = m.signatures["personalized"](
        query=tf.constant({QUERIES[:2]!r}), k=tf.constant(3),
        user_gender=tf.constant(["f", "m"]),
        user_history=tf.constant([["item3", "item7"], ["item9", ""]]))
    print(json.dumps({{k: v.numpy().astype(str).tolist() for k, v in out.items()}}))
    """
    got = run_fresh(script)
    assert len(got["item_ids"]) == 2 and len(got["item_ids"][0]) == 3
    assert all(i.startswith("item") for row in got["item_ids"] for i in row)


def test_signatures_and_defaults(servable):
    from tensorflow.core.protobuf import saved_model_pb2
    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(servable["version_dir"], "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    sigs = sm.meta_graphs[0].signature_def
    assert set(sigs["serving_default"].inputs) == {"query", "k"}
    assert set(sigs["personalized"].inputs) == {
        "query", "k", "user_history", *[f"user_{n}" for n in servable["spec"].user_features]}
    for name in ("serving_default", "personalized"):
        assert set(sigs[name].defaults) == {"k"}  # TF Serving lets a request leave k out
        assert sigs[name].defaults["k"].int_val == [5]
        assert set(sigs[name].outputs) == {"item_ids", "scores", "heads"}


def test_anonymous_request_equals_unknown_user(servable):
    # serving_default (query only) runs the personalized graph with an unknown user and an
    # empty history; `personalized` with unknown values gives the same answer.
    assert list(servable["spec"].user_features) == ["gender"]  # the tiny catalog's profile
    script = LOAD_TF1.format(path=servable["version_dir"]) + f"""
    a = call("serving_default", {{"query": {QUERIES!r}}}, ["item_ids", "scores"])
    b = call("personalized", {{"query": {QUERIES!r}, "k": 5,
                                  "user_gender": ["not-a-gender"] * 4,
                                  "user_history": [[""]] * 4}}, ["item_ids", "scores"])
    c = call("personalized", {{"query": {QUERIES!r}, "user_gender": ["f"] * 4,
                                  "user_history": [["item3", "item7"]] * 4}}, ["scores"])
    print(json.dumps({{"a": a["item_ids"].astype(str).tolist(),
                      "b": b["item_ids"].astype(str).tolist(),
                      "sa": a["scores"].tolist(), "sb": b["scores"].tolist(),
                      "sc": c["scores"].tolist()}}))
    """
    got = run_fresh(script)
    assert len(got["a"][0]) == 5 and got["a"] == got["b"]
    np.testing.assert_allclose(got["sa"], got["sb"], atol=1e-6)
    assert not np.allclose(got["sa"], got["sc"], atol=1e-6)  # the user changes the query


BAD_REQUESTS = [
    ({"query": ["drill"], "k": 0}, r"k must be in \[1, 50\]"),
    ({"query": ["drill"], "k": 51}, r"k must be in \[1, 50\]"),
    ({"query": ["drill", ""]}, "query must not be empty"),
    ({"query": ["x" * 5000]}, "query must be at most 4096 bytes"),
    ({"query": ["a", "b"], "user_gender": ["f"], "user_history": [[""], [""]]},
     "user_gender must have one value per query; got sizes"),
]


def test_bad_requests_are_invalid_argument_and_the_session_keeps_serving(servable):
    # One fresh process for all cases (a process start costs seconds); each case is asserted.
    cases = [feeds for feeds, _ in BAD_REQUESTS]
    script = LOAD_TF1.format(path=servable["version_dir"]) + f"""
    errors = []
    for feeds in {cases!r}:
        signature = "personalized" if "user_gender" in feeds else "serving_default"
        try:
            call(signature, feeds, ["item_ids"])
            errors.append(None)
        except tf.errors.InvalidArgumentError as e:
            errors.append(e.message)
    out = call("serving_default", {{"query": ["still serving"]}}, ["item_ids"])
    print(json.dumps({{"errors": errors, "after": len(out["item_ids"][0])}}))
    """
    got = run_fresh(script)
    for (feeds, pattern), error in zip(BAD_REQUESTS, got["errors"]):
        assert error and re.search(pattern, error), (feeds, error)
    assert got["after"] == 5


def test_truncated_index_asset_is_a_clear_error(servable, tmp_path):
    broken = str(tmp_path / "broken")
    shutil.copytree(servable["version_dir"], broken)
    index = os.path.join(broken, "assets", "index.faiss")
    with open(index, "r+b") as f:
        f.truncate(os.path.getsize(index) // 2)
    script = f"""
    import json, tensorflow as tf
    from dpsr_tf import op_library
    op_library.load()
    try:
        with tf.compat.v1.Session(graph=tf.Graph()) as sess:
            tf.compat.v1.saved_model.loader.load(sess, ["serve"], {broken!r})
        print(json.dumps({{"error": None}}))
    except tf.errors.OpError as e:
        print(json.dumps({{"error": type(e).__name__ + ": " + e.message}}))
    """
    got = run_fresh(script)
    assert got["error"].startswith("InvalidArgumentError"), got
    assert "index.faiss" in got["error"], got


def test_warmup_and_servable_info(servable):
    from dpsr_tf.serving.model_server.lifecycle.warmup import read_warmup_records
    records = read_warmup_records(servable["version_dir"])
    assert records and all(r.predict_log.request.inputs["query"].string_val for r in records)
    with open(os.path.join(servable["version_dir"], "assets.extra", "dpsr_servable.json")) as f:
        info = json.load(f)
    assert info["index_factory"] == "Flat" and info["num_items"] == servable["spec"].num_items
    assert info["model"]["num_heads"] == 2


def test_existing_version_is_not_overwritten(servable):
    base = os.path.dirname(servable["version_dir"])
    version = int(os.path.basename(servable["version_dir"]))
    with pytest.raises(FileExistsError, match="exists"):
        export_servable(servable["model_dir"], servable["index_dir"], base, version=version)


def test_cli_two_shards_merge_to_the_unsharded_answer(servable, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "dpsr_tf.cli", *args], env=env,
                              capture_output=True, text=True, timeout=300)

    def dpsr(*args):
        proc = run(*args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout

    index_dir = str(tmp_path / "index2")
    built, _ = dpsr("index", f"--model_dir={servable['model_dir']}", f"--output_dir={index_dir}",
                    "--index_factory=Flat", "--num_shards=2")
    assert built["num_items"] == servable["spec"].num_items and built["num_shards"] == 2
    out, text = dpsr("export", f"--model_dir={servable['model_dir']}", f"--index_dir={index_dir}",
                     f"--export_base={tmp_path}/models/dpsr", "--default_k=6", "--nohybrid",
                     "--dense_feedback=off")   # feedback over shards: test_dpsr_servable.py
    assert out["servables"] == [f"{tmp_path}/models/dpsr_shard0/1",
                                f"{tmp_path}/models/dpsr_shard1/1"]
    assert "dense feedback" not in text
    script = f"""
    import json
    from tests.support.tf1_servable import Tf1Servable
    res = []
    for path in {out["servables"] + [servable["version_dir"]]!r}:
        servable = Tf1Servable(path)
        o = servable.call("serving_default", {{"query": {QUERIES!r}, "k": 6}},
                          ["item_ids", "scores"])
        servable.close()
        res.append([o["item_ids"].astype(str).tolist(), o["scores"].tolist()])
    print(json.dumps(res))
    """
    (ids0, s0), (ids1, s1), (ids_all, s_all) = run_fresh(script)
    assert not set(ids0[0]) & set(ids1[0])  # the shards hold disjoint items
    for row in range(len(QUERIES)):
        merged = sorted(zip(s0[row] + s1[row], ids0[row] + ids1[row]), reverse=True)[:6]
        np.testing.assert_allclose([s for s, _ in merged], s_all[row], atol=1e-5)


def test_cli_chooses_the_fusion_on_the_validation_split_unless_one_is_given(servable,
                                                                          tmp_path):
    from dpsr_tf.evaluation import fusion_choice  # pylint: disable=import-outside-toplevel
    from dpsr_tf.search.fusion import FusionConfig  # pylint: disable=import-outside-toplevel
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")

    def export(*args):
        proc = subprocess.run([sys.executable, "-m", "dpsr_tf.cli", "export",
                               f"--model_dir={servable['model_dir']}",
                               f"--index_dir={servable['index_dir']}", *args], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        path = json.loads(proc.stdout.strip().splitlines()[-1])["servables"][0]
        with open(os.path.join(path, "assets.extra", "dpsr_servable.json"),
                  encoding="utf-8") as f:
            return proc.stdout, json.load(f)

    from dpsr_tf.search.dense_feedback import DEFAULT  # pylint: disable=import-outside-toplevel
    from dpsr_tf.search.dense_feedback import FeedbackConfig  # pylint: disable=import-outside-toplevel
    text, info = export(f"--export_base={tmp_path}/chosen")
    choice = info["fusion_choice"]
    # --dense_feedback=auto (one shard, a lexical index): every fusion without and with the
    # default feedback, in that order.
    off, on = FeedbackConfig().to_json(), DEFAULT.to_json()
    n = len(fusion_choice.CANDIDATES)
    assert [c["dense_feedback"] for c in choice["candidates"]] == [off] * n + [on] * n
    assert [c["fusion"] for c in choice["candidates"]] == [
        c.to_json() for c in fusion_choice.CANDIDATES] * 2
    best = max(choice["candidates"], key=lambda c: c["score"])   # the first best on a tie
    assert choice["fusion"] == best["fusion"] and choice["score"] == best["score"]
    assert choice["dense_feedback"] == best["dense_feedback"]
    chosen = FusionConfig.from_json(choice["fusion"])
    assert info["servable"]["fusion"] == json.loads(chosen.to_json())
    assert info["servable"]["dense_feedback"] == json.loads(best["dense_feedback"])
    assert choice["split"] == "validation"
    assert "fusion chosen on the validation split: " + fusion_choice.describe(chosen) in text
    assert (f"dense feedback {'on' if best['dense_feedback'] == on else 'off'}: chosen on the "
            "validation split") in text
    # --spelling=auto: the tiny catalog's words mix letters and digits, so the speller changes
    # no query, both scores tie and the queries stay as typed.
    assert choice["spelling"] == {"mode": "auto", "on": False,
                                  "scores": {"with": choice["score"], "without": choice["score"]}}
    assert info["servable"]["spelling"] is False
    assert "spelling off: objective" in text
    # --fusion_objective: the same candidates, chosen and recorded by recall@10 alone.
    text, by_recall = export(f"--export_base={tmp_path}/recall", "--fusion_objective=recall@10")
    recall_choice = by_recall["fusion_choice"]
    assert recall_choice["objective"] == ["recall@10"]
    _, no_feedback = export(f"--export_base={tmp_path}/nofb", "--dense_feedback=off")
    assert "dense_feedback" not in no_feedback["fusion_choice"]["candidates"][0]
    assert len(no_feedback["fusion_choice"]["candidates"]) == n
    assert no_feedback["servable"]["dense_feedback"] == {"items": 0, "weight": 0.25}
    assert [c["recall@10"] for c in recall_choice["candidates"]] == [
        c["score"] for c in recall_choice["candidates"]]
    assert recall_choice["score"] == max(c["recall@10"] for c in recall_choice["candidates"])
    assert "objective mean of recall@10" in text
    _, given = export(f"--export_base={tmp_path}/given", "--lexical_weight=0.25")
    assert given["servable"]["fusion"]["lexical_weight"] == 0.25
    # A given fusion is kept; auto spelling and feedback are still decided on the split, with
    # that fusion.
    assert [(FusionConfig.from_json(c["fusion"]), c["dense_feedback"])
            for c in given["fusion_choice"]["candidates"]] == [
        (FusionConfig(lexical_weight=0.25), off), (FusionConfig(lexical_weight=0.25), on)]
    _, fixed = export(f"--export_base={tmp_path}/fixed", "--lexical_weight=0.25",
                      "--spelling=on", "--dense_feedback=off")
    assert fixed["fusion_choice"] is None and fixed["servable"]["spelling"] is True
    # With --rewrites the candidates fuse the lexical lists merged with the table's rewrites
    # (scored exactly in tests/evaluation/test_fusion_choice.py): here each validation query's
    # rewrite is the title of one of its relevant items, which moves the candidates' scores.
    from dpsr_tf.rewriting import table  # pylint: disable=import-outside-toplevel
    eval_set = eval_set_lib.load_eval_set(servable["spec"], "validation")
    titles = layout_lib.load_item_table(servable["spec"]).titles
    path_table = str(tmp_path / "rewrites.tsv")
    table.write_table(path_table, [
        (q, [(titles[eval_set.relevant_rows[eval_set.relevant_splits[i]]], -1.0)])
        for i, q in enumerate(eval_set.queries)])
    text, rewritten = export(f"--export_base={tmp_path}/rewritten", f"--rewrites={path_table}",
                             "--rewrite_combine=sum", "--rewrite_weight=0.5")
    assert f"merged with the rewrites of {path_table}" in text
    assert [c["score"] for c in rewritten["fusion_choice"]["candidates"]] != [
        c["score"] for c in choice["candidates"]]


def test_hybrid_servable_fuses_its_dense_and_lexical_lists(servable, tmp_path):
    """The hybrid servable's answer equals fuse_np over the dense servable's list and the
    lexical index's list (LexicalSearcher, the same C++ core), with sources and list scores."""
    from dpsr_tf.search.fusion import SOURCE_NAMES, fuse_np  # pylint: disable=import-outside-toplevel
    from dpsr_tf.indexing.lexical_index import LexicalSearcher  # pylint: disable=import-outside-toplevel
    path = export_servable(servable["model_dir"], servable["index_dir"],
                           str(tmp_path / "hybrid"),
                           servable=ServableConfig(default_k=5, max_k=50))
    script = LOAD_TF1.format(path=path) + f"""
    out = call("serving_default", {{"query": {QUERIES!r}, "k": 7}},
               ["item_ids", "scores", "heads", "source", "dense_scores", "lexical_scores",
                "fusion_rule"])
    lex = call("lexical", {{"query": {QUERIES!r}, "k": 7}}, ["item_ids", "scores", "source"])
    errors = []
    for feeds in ({{"query": [""]}}, {{"query": ["a"], "k": 51}}, {{"query": ["x" * 4097]}}):
        try:
            call("lexical", feeds, ["item_ids"])
            errors.append(None)
        except tf.errors.InvalidArgumentError as e:
            errors.append(e.message)
    out.update({{"lex_" + k: v for k, v in lex.items()}})
    print(json.dumps({{**{{k: (v.astype(str).tolist() if v.dtype == object else v.tolist())
                         for k, v in out.items()}}, "errors": errors}}))
    """
    got = run_fresh(script)
    dense = _dense_answers(servable, str(tmp_path / "dense"), QUERIES, 7)
    ids = layout_lib.load_item_table(servable["spec"]).ids
    lex_scores, lex_rows = LexicalSearcher(servable["index_dir"], ids).search(QUERIES, 7)
    assert (lex_rows[:3] >= 0).any(), "the queries should match some titles"
    lex_ids = np.array([[ids[r] if r >= 0 else "" for r in row] for row in lex_rows], object)
    want_s, want_ids, want_src = fuse_np(np.array(dense["scores"], np.float32),
                                         np.array(dense["ids"], object), lex_scores, lex_ids, 7)
    assert got["item_ids"] == want_ids.tolist()
    np.testing.assert_allclose(got["scores"], want_s, rtol=1e-6)
    assert got["source"] == [[SOURCE_NAMES[s] for s in row] for row in want_src]
    dense_of = [dict(zip(i, s)) for i, s in zip(dense["ids"], dense["scores"])]
    lex_of = [dict(zip(i, s)) for i, s in zip(lex_ids.tolist(), lex_scores.tolist())]
    for row, row_ids in enumerate(got["item_ids"]):
        for j, item in enumerate(row_ids):
            np.testing.assert_allclose(got["dense_scores"][row][j],
                                       dense_of[row].get(item, -np.inf), rtol=1e-6)
            np.testing.assert_allclose(got["lexical_scores"][row][j],
                                       lex_of[row].get(item, -np.inf), rtol=1e-6)
            assert (got["heads"][row][j] == -1) == (got["source"][row][j] == "lexical")
    assert json.loads(got["fusion_rule"][0])["rule"] == "rrf"
    # The `lexical` signature: the lexical list alone, as LexicalSearcher finds it.
    assert got["lex_item_ids"] == lex_ids.tolist()
    np.testing.assert_allclose(got["lex_scores"], lex_scores, rtol=1e-6)
    assert got["lex_source"] == [["lexical" if r >= 0 else "" for r in row] for row in lex_rows]
    for error, pattern in zip(got["errors"], ["must not be empty", r"k must be in \[1, 50\]",
                                              "at most 4096 bytes"]):
        assert error and re.search(pattern, error), (pattern, error)


def test_sharded_hybrid_servables_through_the_proxy_fuse_the_global_lists(servable, tmp_path):
    """Two hybrid shards behind `dpsr proxy` (real processes, TF Serving client): every result's
    score is the fusion of the item's global dense rank (the unsharded dense servable) and its
    global lexical rank (LexicalSearcher over both shards), by the default rule."""
    from dpsr_tf.search.fusion import SOURCE_NAMES, fuse_np  # pylint: disable=import-outside-toplevel
    from dpsr_tf.indexing.lexical_index import LexicalSearcher  # pylint: disable=import-outside-toplevel
    from dpsr_tf.export.saved_model_export import export_all_shards  # pylint: disable=import-outside-toplevel
    from dpsr_tf.demo.serving_demo import query_model, run_serving_demo  # pylint: disable=import-outside-toplevel
    ids = layout_lib.load_item_table(servable["spec"]).ids
    k = len(ids)  # every item: each shard returns its whole lists, so the pool is complete
    assert k <= 1000
    index_dir = str(tmp_path / "index2")
    catalog_index.index_catalog(servable["model_dir"], index_dir,
                                IndexBuildConfig(factory="Flat", num_shards=2))
    # The capped rewrite merge needs catalog-wide best scores, which a shard lacks: refused.
    from dpsr_tf.rewriting import table  # pylint: disable=import-outside-toplevel
    from dpsr_tf.search.rewrite_merge import RewriteConfig  # pylint: disable=import-outside-toplevel
    table.write_table(str(tmp_path / "rw.tsv"), [(QUERIES[0], [("w99", -1.0)])])
    with pytest.raises(ValueError, match="capped needs the best scores over the whole catalog"):
        export_all_shards(servable["model_dir"], index_dir, str(tmp_path / "capped"),
                          servable=ServableConfig(rewrites=RewriteConfig(combine="capped")),
                          rewrite_table=str(tmp_path / "rw.tsv"))
    assert not os.path.exists(tmp_path / "capped")
    paths = export_all_shards(servable["model_dir"], index_dir, str(tmp_path / "m" / "dpsr"),
                              servable=ServableConfig(default_k=5, max_k=1000))
    queries = QUERIES[:3]
    os.makedirs(tmp_path / "logs")
    lexical = []
    results = run_serving_demo(
        [os.path.dirname(p) for p in paths], queries, k=k, show=0, out=lambda _: None,
        log_dir=str(tmp_path / "logs"),
        while_up=lambda stub: lexical.extend(query_model(stub, "dpsr", queries, 7,
                                                         signature="lexical")))
    dense = _dense_answers(servable, str(tmp_path / "dense"), queries, k)
    lex_scores, lex_rows = LexicalSearcher(index_dir, ids).search(queries, k)
    lex_ids = np.array([[ids[r] if r >= 0 else "" for r in row] for row in lex_rows], object)
    want_s, want_ids, want_src = fuse_np(np.array(dense["scores"], np.float32),
                                         np.array(dense["ids"], object), lex_scores, lex_ids, k)
    for row, result in enumerate(results):
        assert not result.partial
        want = {i: (s, SOURCE_NAMES[src]) for i, s, src in
                zip(want_ids[row], want_s[row], want_src[row]) if i}
        got = [(i, s, src) for i, s, src in zip(result.item_ids, result.scores, result.sources)
               if i]
        assert {i for i, _, _ in got} == set(want)
        for item, score, source in got:
            np.testing.assert_allclose(score, want[item][0], rtol=1e-5)
            assert source == want[item][1]
        assert all(a >= b for a, b in zip(result.scores, result.scores[1:]))
    # The `lexical` signature through the proxy: each shard's BM25 top 7 merged by score is the
    # global top 7 (idf and avgdl are catalog-wide).
    for row, result in enumerate(lexical):
        want = [(ids[r], s) for r, s in zip(lex_rows[row][:7], lex_scores[row][:7]) if r >= 0]
        got = [(i, s) for i, s in zip(result.item_ids, result.scores) if i]
        assert not result.partial and len(got) == len(want) >= 1
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5)
        ties = {s for _, s in want[-1:]}  # the last score may be shared beyond the cut
        assert {i for i, s in got if s not in ties} == {i for i, s in want if s not in ties}
        assert result.sources == ["lexical"] * len(got) + [""] * (len(result.sources) - len(got))


def test_mmap_index_servable_answers_as_the_read_one(servable, tmp_path):
    """--mmap_index: the load op maps the IVF lists (attr mmap), and the answers are equal."""
    from tensorflow.core.protobuf import saved_model_pb2
    ivf_dir = str(tmp_path / "ivf_index")
    catalog_index.index_catalog(servable["model_dir"], ivf_dir,
                                IndexBuildConfig(factory="IVF4,SQ8", nprobe=4))
    answers, mmap_attrs = [], []
    for mmap in (False, True):
        path = export_servable(servable["model_dir"], ivf_dir, str(tmp_path / f"m{int(mmap)}"),
                               servable=ServableConfig(default_k=5, max_k=50, hybrid=False,
                                                       mmap_index=mmap))
        sm = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            sm.ParseFromString(f.read())
        mmap_attrs.append([n.attr["mmap"].b for n in sm.meta_graphs[0].graph_def.node
                           if n.op == "Dpsr>FaissIndexLoad"])
        answers.append(run_fresh(LOAD_TF1.format(path=path) + f"""
    out = call("serving_default", {{"query": {QUERIES!r}, "k": 7}}, ["item_ids", "scores"])
    print(json.dumps({{"ids": out["item_ids"].astype(str).tolist(),
                      "scores": out["scores"].tolist()}}))
    """))
    assert mmap_attrs == [[False], [True]]
    assert answers[0]["ids"] == answers[1]["ids"]
    np.testing.assert_array_equal(answers[0]["scores"], answers[1]["scores"])


@pytest.mark.parametrize("combine", ["max", "sum", "capped"])
def test_rewrite_table_servable_merges_rewrite_lists_then_fuses(servable, tmp_path, combine):
    """With a rewrite table the served answer equals fuse_np over the dense list and
    merge_np(the query's lexical list, its rewrites' lists, combine), sources "rewrite" where
    only a rewrite's list found a lexical-only item; queries without an entry answer as
    before."""
    from dpsr_tf.search.fusion import fuse_np  # pylint: disable=import-outside-toplevel
    from dpsr_tf.indexing.lexical_index import LexicalSearcher  # pylint: disable=import-outside-toplevel
    from dpsr_tf.search.rewrite_merge import RewriteConfig, merge_np  # pylint: disable=import-outside-toplevel
    from dpsr_tf.rewriting import table  # pylint: disable=import-outside-toplevel
    # "brand5 cat3" finds the items of the query "cat3 brand5" (BM25 ignores order): "sum"
    # then differs from "max".
    rewrites = {QUERIES[3]: ["w17 w203", "brand1 cat0"], QUERIES[0]: ["w99", "brand5 cat3"]}
    path_table = str(tmp_path / "rewrites.tsv")
    # Keys are normalized: the upper-case, spaced spelling of a query finds its entry.
    table.write_table(path_table, [("  " + q.upper() + " ", [(r, -1.0) for r in rw])
                                   for q, rw in rewrites.items()])
    cfg = RewriteConfig(max_rewrites=2, rewrite_weight=0.8, combine=combine)
    path = export_servable(servable["model_dir"], servable["index_dir"], str(tmp_path / "rw"),
                           servable=ServableConfig(default_k=5, max_k=50, rewrites=cfg),
                           rewrite_table=path_table)
    got = run_fresh(LOAD_TF1.format(path=path) + f"""
    out = call("serving_default", {{"query": {QUERIES!r}, "k": 9}},
               ["item_ids", "scores", "source", "lexical_scores"])
    lex = call("lexical", {{"query": {QUERIES!r}, "k": 9}}, ["item_ids", "scores", "source"])
    out.update({{"lex_" + k: v for k, v in lex.items()}})
    print(json.dumps({{k: (v.astype(str).tolist() if v.dtype == object else v.tolist())
                      for k, v in out.items()}}))
    """)
    dense = _dense_answers(servable, str(tmp_path / "dense"), QUERIES, 9)
    ids = layout_lib.load_item_table(servable["spec"]).ids
    searcher = LexicalSearcher(servable["index_dir"], ids)
    q_scores, q_rows = searcher.search(QUERIES, 9)
    rw_texts = [(rewrites.get(q, []) + ["", ""])[:2] for q in QUERIES]
    rw_s, rw_r = searcher.search([t for row in rw_texts for t in row], 9)
    m_s, m_r, m_q = merge_np(q_scores, q_rows, rw_s.reshape(4, 2, 9), rw_r.reshape(4, 2, 9),
                             9, cfg.rewrite_weight, combine)
    if combine == "sum":   # the data must tell the two rules apart
        other = merge_np(q_scores, q_rows, rw_s.reshape(4, 2, 9), rw_r.reshape(4, 2, 9), 9,
                         cfg.rewrite_weight, "max")
        assert not np.array_equal(other[0], m_s)
    assert (m_r[3] >= 0).any() and not (q_rows[3] >= 0).any(), "rewrites must add recall"
    m_ids = np.array([[ids[r] if r >= 0 else "" for r in row] for row in m_r], object)
    want_s, want_ids, want_src = fuse_np(np.array(dense["scores"], np.float32),
                                         np.array(dense["ids"], object), m_s, m_ids, 9)
    assert got["item_ids"] == want_ids.tolist()
    np.testing.assert_allclose(got["scores"], want_s, rtol=1e-6)
    only_rewrite = [{ids[r] for r, q in zip(rr, qq) if r >= 0 and not q}
                    for rr, qq in zip(m_r, m_q)]
    names = {0: "", 1: "dense", 2: "lexical", 3: "both"}
    want_names = [[("rewrite" if s == 2 and i in only_rewrite[b] else names[s])
                   for s, i in zip(srow, irow)]
                  for b, (srow, irow) in enumerate(zip(want_src, want_ids.tolist()))]
    assert got["source"] == want_names
    assert "rewrite" in got["source"][3]
    lex_of = [dict(zip(i, s)) for i, s in zip(m_ids.tolist(), m_s.tolist())]
    for row, row_ids in enumerate(got["item_ids"]):
        for j, item in enumerate(row_ids):
            np.testing.assert_allclose(got["lexical_scores"][row][j],
                                       lex_of[row].get(item, -np.inf), rtol=1e-6)
    # The `lexical` signature: the merged lexical list alone, "rewrite" where only a rewrite's
    # list held the item.
    assert got["lex_item_ids"] == m_ids.tolist()
    np.testing.assert_allclose(got["lex_scores"], m_s, rtol=1e-6)
    assert got["lex_source"] == [["" if r < 0 else "lexical" if q else "rewrite"
                                  for r, q in zip(rr, qq)] for rr, qq in zip(m_r, m_q)]
    assert "rewrite" in got["lex_source"][3] and "rewrite" not in got["lex_source"][1]
    # What the export's fusion choice (and bench/dense_feedback_quality.py) scores for a table:
    # evaluation/rewrites.py's lists, from the table file as written, equal the served ones.
    from dpsr_tf.evaluation import rewrites as rewrites_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.search.fusion import FusionConfig  # pylint: disable=import-outside-toplevel
    texts = rewrites_lib.rewrite_texts(QUERIES, table.read_table(path_table), cfg.max_rewrites)
    e_s, e_r = rewrites_lib.lexical_lists_with_rewrites(searcher, QUERIES, texts, cfg, 5)(
        FusionConfig(lexical_k=9))
    assert [[ids[r] if r >= 0 else "" for r in row] for row in e_r] == got["lex_item_ids"]
    np.testing.assert_allclose(e_s, got["lex_scores"], rtol=1e-6)


def test_online_rewriter_servable_decodes_rewrites_for_queries_without_a_table_entry(
        servable, tmp_path):
    """With --online_rewriter, a query without a table entry searches the rewriter's greedy
    rewrite (generate.Rewriter, greedy, title beam 1) as its first rewrite; a query with an
    entry keeps the table's rewrites. The `lexical` signature equals merge_np over those."""
    from dpsr_tf.indexing.lexical_index import LexicalSearcher  # pylint: disable=import-outside-toplevel
    from dpsr_tf.rewriting import generate, table  # pylint: disable=import-outside-toplevel
    from dpsr_tf.rewriting.train import train_rewriter  # pylint: disable=import-outside-toplevel
    from dpsr_tf.search.rewrite_merge import RewriteConfig, merge_np  # pylint: disable=import-outside-toplevel
    from tests.support.tiny_rewriter import TINY  # pylint: disable=import-outside-toplevel
    rewriter_dir = str(tmp_path / "rewriter")
    train_rewriter(servable["spec"].layout_dir, rewriter_dir, TINY, max_units=200,
                   log_every=30, save_every=30, log=lambda _: None)
    online = [r.rewrites[0].text if r.rewrites else "" for r in generate.Rewriter(
        rewriter_dir).rewrite(QUERIES, generate.DecodeConfig("greedy", title_beam=1), log=None)]
    assert sum(bool(t) for t in online) >= 2, online
    listed = {QUERIES[1]: ["brand1 cat0"]}          # QUERIES[1] keeps its table entry
    path_table = str(tmp_path / "rewrites.tsv")
    table.write_table(path_table, [(q, [(r, -1.0) for r in rw]) for q, rw in listed.items()])
    cfg = RewriteConfig(max_rewrites=2, rewrite_weight=0.8, combine="max")
    path = export_servable(servable["model_dir"], servable["index_dir"], str(tmp_path / "on"),
                           servable=ServableConfig(default_k=5, max_k=50, rewrites=cfg),
                           rewrite_table=path_table, online_rewriter=rewriter_dir)
    got = run_fresh(LOAD_TF1.format(path=path) + f"""
    lex = call("lexical", {{"query": {QUERIES!r}, "k": 9}}, ["item_ids", "scores", "source"])
    one = call("lexical", {{"query": {QUERIES[2:3]!r}, "k": 9}}, ["item_ids"])
    out = call("serving_default", {{"query": {QUERIES!r}, "k": 9}}, ["item_ids"])
    print(json.dumps({{"lex": {{k: (v.astype(str).tolist() if v.dtype == object else v.tolist())
                              for k, v in lex.items()}},
                      "one": one["item_ids"].astype(str).tolist(),
                      "served": out["item_ids"].astype(str).tolist()}}))
    """)
    ids = layout_lib.load_item_table(servable["spec"]).ids
    searcher = LexicalSearcher(servable["index_dir"], ids)
    q_scores, q_rows = searcher.search(QUERIES, 9)
    texts = [(listed[q] + [""])[:2] if q in listed else [online[i], ""]
             for i, q in enumerate(QUERIES)]
    rw_s, rw_r = searcher.search([t for row in texts for t in row], 9)
    m_s, m_r, m_q = merge_np(q_scores, q_rows, rw_s.reshape(4, 2, 9), rw_r.reshape(4, 2, 9), 9,
                             cfg.rewrite_weight, cfg.combine)
    assert got["lex"]["item_ids"] == [[ids[r] if r >= 0 else "" for r in row] for row in m_r]
    np.testing.assert_allclose(got["lex"]["scores"], m_s, rtol=1e-6)
    assert got["lex"]["source"] == [["" if r < 0 else "lexical" if q else "rewrite"
                                     for r, q in zip(rr, qq)] for rr, qq in zip(m_r, m_q)]
    assert any("rewrite" in row for row in got["lex"]["source"]), "no online rewrite found more"
    assert got["one"] == got["lex"]["item_ids"][2:3]   # the same alone as in a batch
    assert len(got["served"]) == 4
    with open(os.path.join(path, "assets.extra", "dpsr_servable.json")) as f:
        info = json.load(f)
    assert info["online_rewriter"]["rewriter_dir"] == rewriter_dir
    # Only hybrid servables search rewrites.
    with pytest.raises(ValueError, match="lexical index"):
        export_servable(servable["model_dir"], servable["index_dir"], str(tmp_path / "dense"),
                        servable=ServableConfig(hybrid=False), online_rewriter=rewriter_dir)


def test_spelling_servable_answers_the_corrected_query(servable, tmp_path):
    """With the build's speller vocabulary, the servable corrects each query before the query
    tower and BM25 see it: its answer to a misspelled query is the plain servable's answer to
    the corrected one, in every signature; without the speller (--nospelling) it is not."""
    import dataclasses  # pylint: disable=import-outside-toplevel
    from dpsr_tf.indexing import index_layout  # pylint: disable=import-outside-toplevel
    index_dir = str(tmp_path / "index")
    shutil.copytree(servable["index_dir"], index_dir)
    manifest = index_layout.read_manifest(index_dir)
    vocab = os.path.join(index_dir, manifest.lexical.speller_file)
    # The tiny catalog's words mix letters and digits (nothing to correct); add one word.
    with open(vocab, "a", encoding="utf-8") as f:
        f.write("xylophone\t1\n")
    index_layout.write_manifest(index_dir, dataclasses.replace(manifest, lexical=dataclasses.replace(
        manifest.lexical, speller_bytes=os.path.getsize(vocab))))
    typed = ["xylophne w17 brand1", "cat3 brand5", "xylophone w17 brand1"]
    corrected = ["xylophone w17 brand1", "cat3 brand5", "xylophone w17 brand1"]
    outputs = ["item_ids", "scores", "dense_scores", "lexical_scores", "source"]
    got = {}
    for name, spelling, queries in (("spelled", True, typed), ("plain", False, corrected),
                                    ("plain_typed", False, typed)):
        path = export_servable(servable["model_dir"], index_dir, str(tmp_path / name),
                               servable=ServableConfig(default_k=5, max_k=50,
                                                       spelling=spelling))
        assert os.path.exists(os.path.join(path, "assets", "speller_vocab.txt")) == spelling
        got[name] = run_fresh(LOAD_TF1.format(path=path) + f"""
    out = call("serving_default", {{"query": {queries!r}, "k": 9}}, {outputs!r})
    lex = call("lexical", {{"query": {queries!r}, "k": 9}}, ["item_ids", "scores"])
    out.update({{"lex_" + k: v for k, v in lex.items()}})
    print(json.dumps({{k: (v.astype(str).tolist() if v.dtype == object else v.tolist())
                      for k, v in out.items()}}))
    """)
    assert got["spelled"].keys() == got["plain"].keys()
    for key, value in got["spelled"].items():
        if key.endswith("ids") or key == "source":
            assert value == got["plain"][key], key
        else:
            np.testing.assert_allclose(value, got["plain"][key], rtol=1e-6, err_msg=key)
    # The misspelling changes the dense scores of a servable that does not correct it.
    assert not np.allclose(np.nan_to_num(got["plain_typed"]["dense_scores"][0], neginf=0),
                           np.nan_to_num(got["plain"]["dense_scores"][0], neginf=0))


def test_dense_feedback_servable_searches_with_heads_moved_toward_its_first_hits(servable,
                                                                                 tmp_path):
    """With dense feedback the servable's list is numpy brute force over the index's item
    embeddings with each head moved by hand toward the unit mean of its 3 exact first hits;
    the move changes some answers; two shards' feedback rounds merge to the same answer."""
    from dpsr_tf.search.dense_feedback import FeedbackConfig  # pylint: disable=import-outside-toplevel
    cfg = FeedbackConfig(items=3, weight=0.5)
    path = export_servable(servable["model_dir"], servable["index_dir"], str(tmp_path / "fb"),
                           servable=ServableConfig(default_k=5, max_k=50, hybrid=False,
                                                   dense_feedback=cfg))
    got = run_fresh(LOAD_TF1.format(path=path) + f"""
    q = call("query_embedding", {{"query": {QUERIES!r}}}, ["embedding"])["embedding"]
    out = call("serving_default", {{"query": {QUERIES!r}, "k": 7}}, ["item_ids", "scores"])
    print(json.dumps({{"q": q.tolist(), "ids": out["item_ids"].astype(str).tolist(),
                      "scores": out["scores"].tolist()}}))
    """)
    items, ids = catalog_index.load_catalog_embeddings(servable["index_dir"])
    items = np.asarray(items, np.float64)
    q = np.array(got["q"], np.float64)                                   # [Q, m, d]
    plain = np.einsum("qmd,nd->qnm", q, items).max(-1)
    first = np.argsort(-plain, axis=1, kind="stable")[:, :3]
    mean = items[first].mean(axis=1)
    unit = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    moved = q + 0.5 * np.linalg.norm(q, axis=2, keepdims=True) * unit[:, None, :]
    best = np.einsum("qmd,nd->qnm", moved, items).max(-1)
    changed = False
    for row in range(len(QUERIES)):
        order = np.argsort(-best[row], kind="stable")[:7]
        np.testing.assert_allclose(got["scores"][row], best[row][order], atol=1e-4)
        for j, (g, w) in enumerate(zip(got["ids"][row], [ids[i] for i in order])):
            if g != w:   # two items tied within float error
                assert abs(best[row][list(ids).index(g)] - best[row][order[j]]) < 1e-4
        changed |= list(order) != list(np.argsort(-plain[row], kind="stable")[:7])
    assert changed, "the move should change some query's top 7"
    with open(os.path.join(path, "assets.extra", "dpsr_servable.json"), encoding="utf-8") as f:
        assert json.load(f)["servable"]["dense_feedback"] == {"items": 3, "weight": 0.5}
    # Two shards, as the proxy calls them (serving/proxy/feedback_rounds.py): each shard's
    # first hits pooled into one direction, each shard searched along it, the answers merged
    # by score: the one-shard servable's answer.
    two = str(tmp_path / "two_shards")
    catalog_index.index_catalog(servable["model_dir"], two,
                                IndexBuildConfig(factory="Flat", num_shards=2))
    shards = [export_servable(servable["model_dir"], two, str(tmp_path / f"fb2_{shard}"),
                              shard=shard, servable=ServableConfig(
                                  default_k=5, max_k=50, hybrid=False, dense_feedback=cfg))
              for shard in range(2)]
    merged = run_fresh(f"""
    import json, numpy as np
    from dpsr_tf.serving.proxy import feedback_rounds
    from tests.support.tf1_servable import Tf1Servable
    shards = [Tf1Servable(p) for p in {shards!r}]
    feeds = {{"query": {QUERIES!r}}}
    hits = [(i, tuple(s.call("serving_default.feedback_hits", feeds,
                             ["hit_scores", "hit_embeddings"]).values()))
            for i, s in enumerate(shards)]
    direction, left_out = feedback_rounds.direction(hits, "dpsr")
    assert not left_out and [h[0].shape for _, h in hits] == [(len(feeds["query"]), 3)] * 2
    ids, scores = [], []
    for s in shards:
        out = s.call("serving_default.feedback_search",
                     dict(feeds, k=7, feedback_direction=direction), ["item_ids", "scores"])
        ids.append(out["item_ids"].astype(str))
        scores.append(out["scores"])
    ids, scores = np.concatenate(ids, 1), np.concatenate(scores, 1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :7]
    print(json.dumps({{"ids": np.take_along_axis(ids, order, 1).tolist(),
                      "scores": np.take_along_axis(scores, order, 1).tolist()}}))
    """)
    np.testing.assert_allclose(merged["scores"], got["scores"], atol=1e-5)
    for row in range(len(QUERIES)):
        for j, (m, g) in enumerate(zip(merged["ids"][row], got["ids"][row])):
            if m != g:   # two items tied within float error
                assert abs(merged["scores"][row][j] - got["scores"][row][j]) < 1e-5
    # retrieve_rerank has no rounds: with a ranker, a sharded feedback export is refused.
    with pytest.raises(ValueError, match="dense feedback with a ranker needs a one-shard index"):
        export_servable(servable["model_dir"], two, str(tmp_path / "fb2_rank"),
                        ranker_dir=str(tmp_path / "any_ranker"),
                        servable=ServableConfig(hybrid=False, dense_feedback=cfg))
    assert not os.path.exists(str(tmp_path / "fb2_rank"))
