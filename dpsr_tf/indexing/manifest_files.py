"""The cheap check of a file that an index manifest lists: it exists with its recorded size."""
import os
from typing import Optional


def check_listed_file(path: str, size: Optional[int], source: str, what: str) -> None:
    """Raises ValueError naming the manifest (`source`) and the file (`what`: "shard 3 index")
    when `path` is missing or, with a recorded `size`, has another size. No byte is read."""
    if not os.path.isfile(path):
        raise ValueError(f"{source}: {what} file {path} is missing")
    if size is not None:
        found = os.path.getsize(path)
        if found != size:
            raise ValueError(f"{source}: {what} file {path} has {found} bytes, the manifest "
                             f"says {size}")
