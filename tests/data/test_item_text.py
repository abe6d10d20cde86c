"""Lexical documents from several item fields (data/item_text.py): parsing, the documents of a
real prepared layout against its items file, and a lexical index built over them."""
import numpy as np
import pytest

from dpsr_tf.data import item_text
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import pseudo_queries as pseudo_lib

ITEMS = ("item_id\ttitle\tbrand\tcategory\n"
         "A\ttrail runner\tacme\tshoes\n"
         "B\tacme poster\t\tposters\n"
         "C\tgarden hose\tverdi\tgarden\n")
INTER = ("query\tuser_id\titem_id\tlabel\ttimestamp\n"
         "acme\t\tA\tclick\t1\n"
         "hose\t\tC\tclick\t2\n")


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    work = tmp_path_factory.mktemp("fields")
    (work / "items.tsv").write_text(ITEMS, encoding="utf-8")
    (work / "inter.tsv").write_text(INTER, encoding="utf-8")
    return prepare_lib.prepare(prepare_lib.PrepareConfig(
        items=str(work / "items.tsv"), interactions=str(work / "inter.tsv"),
        output=str(work / "layout"), max_reject_fraction=1.0,
        pseudo_queries=pseudo_lib.PseudoQueryConfig(per_item=0)), log=lambda _: None)


@pytest.mark.parametrize("text, want", [
    ("title", (item_text.Field("title"),)),
    (" title:2 , brand ", (item_text.Field("title", 2), item_text.Field("brand"))),
    ("all", (item_text.Field("all"),)),
])
def test_parse(text, want):
    assert item_text.parse_fields(text) == want
    assert item_text.fields_spec(want) == text.replace(" ", "")


@pytest.mark.parametrize("text, message", [
    ("", "no lexical field"), ("title:0", "whole weight"), ("title:x", "whole weight"),
    (f"title:{item_text.MAX_WEIGHT + 1}", "whole weight"), ("title,title:2", "twice"),
    ("all,brand", "stands alone"),
])
def test_parse_errors(text, message):
    with pytest.raises(ValueError, match=message):
        item_text.parse_fields(text)


def test_documents_follow_the_items_file(spec):
    rows = {i: r for r, i in enumerate(open(spec.path(layout_lib.ITEM_IDS), encoding="utf-8")
                                     .read().split())}
    title = item_text.item_documents(spec, item_text.parse_fields("title"))
    assert title[rows["A"]] == "trail runner"
    docs = item_text.item_documents(spec, item_text.parse_fields("brand:2,title"))
    assert docs[rows["A"]] == "acme acme trail runner"
    assert docs[rows["B"]] == "acme poster"            # no brand: nothing added
    every = item_text.item_documents(spec, item_text.parse_fields("all"))
    assert every[rows["C"]] == "garden hose verdi garden"
    assert item_text.fields_spec(item_text.resolve_fields(
        item_text.parse_fields("all"), spec.item_features)) == "title,brand,category"
    with pytest.raises(ValueError, match=r"\['colour'\] are not item columns"):
        item_text.item_documents(spec, item_text.parse_fields("title,colour"))


def test_lexical_index_over_fields_finds_a_brand_the_title_lacks(spec, tmp_path):
    from dpsr_tf.indexing import catalog_index, index_builder  # pylint: disable=import-outside-toplevel
    from dpsr_tf.indexing.lexical_index import LexicalSearcher  # pylint: disable=import-outside-toplevel
    from dpsr_tf.indexing.lexical_manifest import LexicalConfig  # pylint: disable=import-outside-toplevel
    ids = open(spec.path(layout_lib.ITEM_IDS), encoding="utf-8").read().split()
    out = str(tmp_path / "index")
    emb = np.random.RandomState(0).rand(len(ids), 4).astype(np.float32)
    index_builder.build_index(emb, ids, out, index_builder.IndexBuildConfig(factory="Flat"))
    found = {}
    for fields in ("title", "all"):
        manifest = catalog_index.add_lexical_index(out, spec.layout_dir,
                                                   LexicalConfig(fields=fields))
        assert manifest.lexical.config.fields == manifest.lexical.text
        _, rows = LexicalSearcher(out, ids).search(["acme"], 3)
        found[manifest.lexical.text] = sorted(ids[r] for r in rows[0] if r >= 0)
    assert found == {"title": ["B"], "title,brand,category": ["A", "B"]}
