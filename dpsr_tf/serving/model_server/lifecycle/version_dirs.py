"""Version directories under a model's base path: which names are versions, which are ignored,
and when a version's files were rewritten (read by the version manager at every poll).
"""
import logging
import os
from typing import Dict, Optional

# The manager's logger: these lines are part of its scans.
_LOG = logging.getLogger("serving.manager")
_INT64_MAX = (1 << 63) - 1


def fingerprint(path: str):
    """Changes when a version directory's SavedModel (or model.tflite) is rewritten."""
    parts = []
    for name in ("", "saved_model.pb", "saved_model.pbtxt", "model.tflite"):
        try:
            st = os.stat(os.path.join(path, name) if name else path)
            parts.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            parts.append(None)
    return tuple(parts)


def version_number(name: str) -> Optional[int]:
    """The version a directory name stands for: ASCII digits only, fitting int64 (as TF
    Serving's version ids); None for anything else ("²" and "１" pass str.isdigit() but are
    not versions; 99999999999999999999 does not fit)."""
    if not name.isascii() or not name.isdigit():
        return None
    value = int(name)
    return value if value <= _INT64_MAX else None


def scan(base_path: str, root: str = "", ignored: Optional[set] = None) -> Dict[int, str]:
    """version -> directory for each version directory under base_path.

    Names that are not versions are ignored (so a version written under a temporary name and
    renamed appears atomically). Names that look like versions but are not (non-ASCII digits,
    beyond int64) and, when `root` is set, directories that resolve outside it (a symlink) are
    ignored too and logged once each: the name is added to `ignored`.
    """
    try:
        names = os.listdir(base_path)
    except OSError:
        return {}
    found = {}
    real_root = os.path.realpath(root) if root else ""
    for name in names:
        version = version_number(name)
        path = os.path.join(base_path, name)
        why = None
        if version is None:
            if name.isdigit():
                why = ("is not a version number: a version directory is named with ASCII "
                       f"digits 0-9 and is at most {_INT64_MAX}")
        elif not os.path.isdir(path):
            continue
        elif real_root:
            real = os.path.realpath(path)
            if os.path.commonpath([real_root, real]) != real_root:
                why = (f"resolves to {real}, outside --model_base_path_root {root}; move it "
                       "under the root")
        if why is not None:
            if ignored is not None and name not in ignored:
                ignored.add(name)
                _LOG.warning("ignoring %r under base path %s: it %s", name, base_path, why)
            continue
        if version is not None:
            found[version] = path
    return found
