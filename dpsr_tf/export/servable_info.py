"""The file `dpsr export` writes beside every servable: assets.extra/dpsr_servable.json (what was
exported from what, the servable settings, the stages it runs). Servers read it to know a
servable is DPSR's (its rows are independent); ops read it to see what a version holds."""
import json
import os
from typing import Optional

SERVABLE_INFO = "dpsr_servable.json"


def servable_info_path(version_dir: str) -> str:
    """Where a servable version's info file is."""
    return os.path.join(version_dir, "assets.extra", SERVABLE_INFO)


def read_servable_info(version_dir: str) -> Optional[dict]:
    """The info of a servable version, or None when `dpsr export` did not write it."""
    path = servable_info_path(version_dir)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
