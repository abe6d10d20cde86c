"""The report page in headless Chromium (Debian package `chromium`, in
tools/apt-packages-test.txt, which `make test` installs): it loads from disk without errors and
its screenshot shows the figures, not a blank page."""
import os
import shutil
import subprocess

import numpy as np
import pytest

from tests.support import waiting

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _console_errors(stderr: str):
    """Chromium log lines about the page itself (not the sandbox's missing D-Bus/GPU)."""
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line or "Failed to load" in line or "Not allowed to load" in line
            or "net::ERR_" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed: add the Debian "
                    "package `chromium` (tools/bootstrap.sh --test installs "
                    "tools/apt-packages-test.txt)")
def test_page_renders_in_headless_chromium(tiny_report, tmp_path):
    import matplotlib.image  # pylint: disable=import-outside-toplevel
    shot = tmp_path / "shot.png"
    url = "file://" + os.path.abspath(tiny_report["page"])
    proc = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,3000",
         "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", url],
        capture_output=True, text=True, timeout=waiting.SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _console_errors(proc.stderr) == []
    pixels = matplotlib.image.imread(str(shot))[..., :3]               # [H, W, 3] in [0, 1]
    assert pixels.shape[:2] == (3000, 1280)
    non_white = (pixels < 0.9).any(axis=2).mean()
    assert non_white > 0.03, f"screenshot is nearly blank ({non_white:.4f} non-white)"
    # The figures drew: saturated red (head 1's markers, curves) and blue pixels are on screen,
    # which text and table borders alone never give.
    red = (pixels[..., 0] > 0.8) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)
    assert red.sum() > 200
    # A page whose images are missing renders without them: prove the check would notice.
    broken = tmp_path / "broken"
    shutil.copytree(tiny_report["output"], broken, ignore=shutil.ignore_patterns(
        "alpha_sweep"))
    shutil.rmtree(broken / "figures")
    with open(broken / "index.html", "a", encoding="utf-8") as f:   # and a script error
        f.write("<script>undefinedFunction();</script>")
    shot2 = tmp_path / "shot2.png"
    proc2 = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                            "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
                            "--window-size=1280,3000", "--enable-logging=stderr", "--v=0",
                            f"--screenshot={shot2}", "file://" + str(broken / "index.html")],
                           capture_output=True, text=True, timeout=waiting.SUBPROCESS_TIMEOUT_S)
    assert any("undefinedFunction" in line for line in _console_errors(proc2.stderr))
    pixels2 = matplotlib.image.imread(str(shot2))[..., :3]
    red2 = (pixels2[..., 0] > 0.8) & (pixels2[..., 1] < 0.3) & (pixels2[..., 2] < 0.3)
    assert red2.sum() < red.sum() / 10
    assert np.isfinite(pixels).all()
