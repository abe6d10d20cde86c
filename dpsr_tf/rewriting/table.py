"""The rewrite table: query -> ranked rewrites with scores, a UTF-8 TSV file.

    # dpsr rewrite table 1
    # query<TAB>rewrite<TAB>score       (comment lines start with '#')
    cordless drill<TAB>drill cordless 18v<TAB>-0.8123
    cordless drill<TAB>impact driver<TAB>-1.2040

A query's rewrites are its lines in file order (best first); score is the rewriter's mean
unit log-probability (any float; the servable does not use it). A query's key is
normalize_query(query): the servable looks rewrites up by the same key.
"""
import collections
import re
from typing import Dict, List, Sequence, Tuple

HEADER = "# dpsr rewrite table 1"
_SPACES = re.compile(r"[\t\n\v\f\r ]+")


def normalize_query(text: str) -> str:
    """The lookup key of a query: lowercased, ASCII whitespace runs collapsed to one space,
    stripped. The servable computes the same key in-graph (tf.strings.lower with UTF-8,
    regex_replace, strip)."""
    return _SPACES.sub(" ", text.lower()).strip()


def write_table(path: str, rows: Sequence[Tuple[str, Sequence[Tuple[str, float]]]]) -> int:
    """Writes (query, [(rewrite, score), ...]) rows; returns the number of rewrite lines."""
    lines = 0
    with open(path, "w", encoding="utf-8") as f:
        f.write(HEADER + "\n# query\trewrite\tscore\n")
        for query, rewrites in rows:
            for text, score in rewrites:
                for field, value in (("query", query), ("rewrite", text)):
                    if "\t" in value or "\n" in value or "\x1f" in value:
                        raise ValueError(f"{field} {value!r} holds a tab, newline or \\x1f")
                f.write(f"{query}\t{text}\t{score:.6f}\n")
                lines += 1
    return lines


def read_table(path: str) -> Dict[str, List[Tuple[str, float]]]:
    """normalize_query(query) -> [(rewrite, score)] in file order; a rewrite repeated for one
    key is kept once (its first line).

    Raises:
      ValueError: a line without three tab-separated fields, an empty field or a bad score
        (the message names the file and line).
    """
    out = collections.OrderedDict()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 3 or not fields[0].strip() or not fields[1].strip():
                raise ValueError(f"{path}:{n}: expected query<TAB>rewrite<TAB>score with a "
                                 f"non-empty query and rewrite, got {line!r}")
            try:
                score = float(fields[2])
            except ValueError:
                raise ValueError(f"{path}:{n}: score {fields[2]!r} is not a number") from None
            rewrites = out.setdefault(normalize_query(fields[0]), [])
            if fields[1] not in (r for r, _ in rewrites):
                rewrites.append((fields[1], score))
    return dict(out)
