"""The report's Figure 5 data: each head's top items of a polysemous query labelled by sense
(heads.sense_panel), against a NumPy brute force, and the colours the map draws them in."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dpsr_tf.report import figures, heads  # noqa: E402


def _reference(request_heads, item_emb, request, k, sense_rows):
    out_rows, out_senses = [], []
    for head in request_heads[request]:
        scores = item_emb @ head
        # Best first, ties by lower row: sort on (-score, row).
        order = sorted(range(len(scores)), key=lambda r: (-float(scores[r]), r))[:k]
        out_rows.append(order)
        out_senses.append([next((s for s, rows in enumerate(sense_rows) if r in set(rows)), -1)
                           for r in order])
    return out_rows, out_senses


@pytest.mark.parametrize("m,k", [(1, 5), (2, 10), (3, 7)])
def test_sense_panel_matches_numpy(m, k):
    rng = np.random.default_rng(m * 10 + k)
    item_emb = rng.normal(size=(60, 8)).astype(np.float32)
    request_heads = rng.normal(size=(4, m, 8)).astype(np.float32)
    sense_rows = [np.arange(0, 60, 3), np.arange(1, 60, 3)]   # rows 2, 5, ... are of no sense
    panel = heads.sense_panel(request_heads, item_emb, 2, k, sense_rows)
    rows, senses = _reference(request_heads, item_emb, 2, k, sense_rows)
    assert panel["heads"] == rows
    assert panel["senses"] == senses
    assert [len(h) for h in panel["senses"]] == [k] * m


def test_sense_panel_by_hand():
    # Head 0 points at items 0/1 (sense 0), head 1 at item 2 (sense 1) then item 3 (none).
    items = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.8]], np.float32)
    q = np.array([[[1, 0], [0, 1]]], np.float32)
    panel = heads.sense_panel(q, items, 0, 2, [np.array([0, 1]), np.array([2])])
    assert panel == {"heads": [[0, 1], [2, 3]], "senses": [[0, 0], [1, -1]]}


def test_map_colours_each_head_item_by_sense():
    xy = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float64)
    query = {"query": "velor", "heads": [[0, 1], [2, 3]], "senses": [[0, 0], [1, -1]],
             "intents": ["smartphone|velor|*|*", "apple_fruit|velor|*|*"]}
    fig, ax = plt.subplots()
    figures._sense_marks(ax, xy, {r: r for r in range(4)}, query, 2)
    drawn = [c for c in ax.collections if len(c.get_offsets())]
    assert len(drawn) == 2                                   # one scatter per head
    want = [[figures.SENSE_COLORS[0]] * 2, [figures.SENSE_COLORS[1], figures.NO_SENSE_COLOR]]
    for coll, rows, colours in zip(drawn, query["heads"], want):
        np.testing.assert_allclose(coll.get_offsets(), xy[rows])
        np.testing.assert_allclose(coll.get_facecolors(), [mcolors.to_rgba(c) for c in colours])
    labels = [t.get_label() for t in ax.collections]
    assert "head 0 top-2" in labels and "head 1 top-2" in labels
    assert "sense: smartphone (velor)" in labels and "sense: apple_fruit (velor)" in labels
    plt.close(fig)
