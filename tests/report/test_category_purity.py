"""Category purity@k (dpsr_tf/report/purity.py) against a hand-worked example and a NumPy
brute force written here without the module's blocking, partition or tie handling."""
import numpy as np
import pytest

from dpsr_tf.report import purity


def _unit(degrees):
    return [np.cos(np.radians(degrees)), np.sin(np.radians(degrees))]


# Six 2-D items at angles 0, 10, 30, 90, 100, 180 degrees (cosine order = angle order).
# Categories: 1 = A, 2 = B, 0 = unknown. Items 0, 3 and 5 are exact so that item 3 is
# equally far (cosine 0) from items 0 and 5: a tie.
HAND_VECTORS = np.array([[1.0, 0.0], _unit(10), _unit(30), [0.0, 1.0], _unit(100),
                         [-1.0, 0.0]], np.float32)
HAND_CATEGORIES = np.array([1, 1, 2, 2, 1, 0])
HAND_KNOWN = HAND_CATEGORIES != 0


def test_hand_worked_example():
    # k = 2, nearest two by angle gap:
    #   item 0 (A):   1 (10), 2 (30)  -> A, B -> 1/2
    #   item 1 (A):   0 (10), 2 (20)  -> A, B -> 1/2
    #   item 2 (B):   1 (20), 0 (30)  -> A, A -> 0
    #   item 3 (B):   4 (10), 2 (60)  -> A, B -> 1/2
    #   item 4 (A):   3 (10), 2 (70)  -> B, B -> 0
    #   item 5 (unknown): not averaged.
    # purity = (1/2 + 1/2 + 0 + 1/2 + 0) / 5 = 0.3
    # chance: N = 6, A has 3 items, B 2: A items (3 - 1) / 5 = 0.4, B items (2 - 1) / 5 = 0.2;
    #   mean over the 5 known = (3 * 0.4 + 2 * 0.2) / 5 = 0.32
    got = purity.category_purity(HAND_VECTORS, HAND_CATEGORIES, HAND_KNOWN, np.arange(6), k=2)
    assert got == {"k": 2, "items": 2 + 3, "purity": pytest.approx(0.3, abs=1e-12),
                   "chance": pytest.approx(0.32, abs=1e-12)}
    # Rows 0, 2, 5: item 5 is unknown, so (1/2 + 0) / 2.
    got = purity.category_purity(HAND_VECTORS, HAND_CATEGORIES, HAND_KNOWN,
                                 np.array([0, 2, 5]), k=2)
    assert got["items"] == 2 and got["purity"] == pytest.approx(0.25, abs=1e-12)


def test_hand_worked_neighbours_and_tie():
    # Item 3 at 90 degrees: 4 (10), 2 (60), 1 (80), then 0 and 5 both at 90: the tie goes to
    # row 0. Item 0: 1 (10), 2 (30), 3 (90), 4 (100).
    got = purity.nearest_items(HAND_VECTORS, np.array([3, 0]), k=4)
    np.testing.assert_array_equal(got, [[4, 2, 1, 0], [1, 2, 3, 4]])
    # Scaling a vector changes nothing (cosine).
    scaled = HAND_VECTORS * np.array([[3.0], [0.5], [2.0], [1.0], [7.0], [0.1]], np.float32)
    np.testing.assert_array_equal(purity.nearest_items(scaled, np.array([3, 0]), k=4), got)


def _brute_force(vectors, categories, known, rows, k):
    v = np.asarray(vectors, np.float64)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    sims = v @ v.T
    shares, chances, neighbours = [], [], []
    for i in rows:
        order = sorted((j for j in range(len(v)) if j != i), key=lambda j: (-sims[i, j], j))[:k]
        neighbours.append(order)
        if not known[i]:
            continue
        shares.append(np.mean([known[j] and categories[j] == categories[i] for j in order]))
        same = sum(1 for j in range(len(v)) if j != i and known[j]
                   and categories[j] == categories[i])
        chances.append(same / (len(v) - 1))
    return np.mean(shares), np.mean(chances), len(shares), np.array(neighbours)


@pytest.mark.parametrize("k", [1, 5, 10])
@pytest.mark.parametrize("num_items,dim", [(300, 8), (600, 3)])
def test_against_numpy_brute_force(k, num_items, dim):
    rng = np.random.default_rng(1234 + k + num_items)
    vectors = rng.normal(size=(num_items, dim)).astype(np.float32)
    categories = rng.integers(0, 6, size=num_items)        # 0 = unknown
    known = categories != 0
    rows = np.sort(rng.choice(num_items, size=120, replace=False))
    want_purity, want_chance, want_items, want_nn = _brute_force(vectors, categories, known,
                                                                 rows, k)
    got = purity.category_purity(vectors, categories, known, rows, k)
    assert got["items"] == want_items
    assert got["purity"] == pytest.approx(want_purity, abs=1e-12)
    assert got["chance"] == pytest.approx(want_chance, abs=1e-12)
    np.testing.assert_array_equal(purity.nearest_items(vectors, rows, k), want_nn)


def test_no_known_category_gives_none():
    got = purity.category_purity(HAND_VECTORS, HAND_CATEGORIES, HAND_KNOWN, np.array([5]), 2)
    assert got == {"k": 2, "items": 0, "purity": None, "chance": None}


@pytest.mark.parametrize("k,rows,match", [
    (0, [0], r"k must be in \[1, 5\]"),
    (6, [0], r"k must be in \[1, 5\]"),
    (2, [6], r"item rows must be in \[0, 6\)"),
])
def test_bad_arguments_are_clear_errors(k, rows, match):
    with pytest.raises(ValueError, match=match):
        purity.category_purity(HAND_VECTORS, HAND_CATEGORIES, HAND_KNOWN, np.array(rows), k)


def test_mismatched_lengths_are_a_clear_error():
    with pytest.raises(ValueError, match="one entry per item"):
        purity.category_purity(HAND_VECTORS, HAND_CATEGORIES[:5], HAND_KNOWN, np.arange(2), 2)
