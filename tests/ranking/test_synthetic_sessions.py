"""Simulated sessions over a tiny synthetic catalog: deterministic, readable by
prepare-sessions, and showing the simulated position bias and preference."""
import numpy as np

from dpsr_tf.demo import synthetic_catalog as synthetic
from dpsr_tf.ranking import sessions as sessions_lib
from dpsr_tf.demo.synthetic_sessions import SessionSimConfig, simulate_impressions


def test_simulated_sessions(tmp_path):
    out = synthetic.generate(synthetic.SyntheticConfig(num_items=400, num_users=60,
                                                       num_interactions=3000, seed=1),
                             str(tmp_path / "syn"), log=lambda *_: None)
    cfg = SessionSimConfig(num_sessions=1500, seed=2)
    a, b = str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv")
    counts = simulate_impressions(out.output_dir, a, cfg, log=None)
    simulate_impressions(out.output_dir, b, cfg, log=None)
    assert open(a, "rb").read() == open(b, "rb").read()          # same seed, same bytes
    ids = [line.split("\t")[0] for line in open(out.items_path, encoding="utf-8")][1:]
    table, read_counts = sessions_lib.read_impressions(a, {x: i for i, x in enumerate(ids)},
                                                       log=lambda *_: None)
    assert len(table) == counts["sessions"] > 500
    assert read_counts["unknown_items"] == 0
    # Every kept session has a click; examination falls with the shown position, so the click
    # rate at positions 0-2 is well above the rate at positions 7-9.
    clicked = table.labels > 0
    assert all(table.candidates(s)[1].max() > 0 for s in range(len(table)))
    top = clicked[table.positions <= 2].mean()
    low = clicked[table.positions >= 7].mean()
    assert top > 1.5 * low, (top, low)
