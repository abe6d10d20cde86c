"""CJK labels in the report's figures are drawn with real glyphs, not the missing-glyph box."""
import os
import warnings

import numpy as np
import pytest

from dpsr_tf.report import figures


def _render(text: str) -> np.ndarray:
    plt = figures._plt()  # pylint: disable=protected-access
    fig = plt.figure(figsize=(2, 0.6), dpi=100)
    fig.text(0.05, 0.3, text, fontsize=14)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return pixels


@pytest.mark.skipif(not any(os.path.exists(p) for p in figures.CJK_FONT_FILES),
                    reason="no CJK font installed (tools/apt-packages.txt: fonts-wqy-microhei)")
def test_cjk_labels_get_distinct_glyphs():
    with warnings.catch_warnings():
        # matplotlib's "Glyph ... missing from current font" would raise.
        warnings.filterwarnings("error", message=r"Glyph \d+ .* missing")
        phone, mouse = _render("手机"), _render("鼠标")
    # Without a CJK font both strings come out as the same two boxes; with one they differ.
    assert (phone < 128).any() and (mouse < 128).any()
    assert not np.array_equal(phone, mouse)
    # Latin text still comes from DejaVu Sans, the first family.
    assert figures._plt().rcParams["font.family"][0] == "DejaVu Sans"  # pylint: disable=protected-access
