"""No text in the tree refers to numbered work periods or issues.

Docs, code, tests, benchmarks and tools describe the product as it is; which numbered session,
issue or stop changed what belongs in git history. A reference such as "session 44", "issue 24",
"issue #27", "(#27)", "stop 6", "work period" or an issue's "done-when" means nothing to a
reader of the tree. A search session of the re-ranker's data ("session 0: items 10, 11") is a
domain term, not a history reference: the rule takes session numbers of two digits and more.
"""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCANNED = ("docs", "README.md", "dpsr_tf", "tests", "bench", "tools", "front_end_cc",
           "tokenizer_cc", "search_cc")
# This file spells the references out to test the pattern.
THIS_FILE = os.path.relpath(os.path.abspath(__file__), ROOT)

HISTORY_REFERENCE = re.compile(
    r"\bsessions?[ _-]#?\d{2,}"            # session 44, session-59, sessions 44
    r"|\bissues?[ _-]?#?\d+"                # issue 27, issue #27, issue-27, issues 24
    r"|\(#\d+\)"                            # (#27)
    r"|\bstops?[ _-]#?\d+\b"                # stop 6, stop-56
    r"|\bwork[ _-]periods?\b"               # work period
    r"|\bdone[ -]when\b",                   # an issue's done-when
    re.IGNORECASE)


def _text_files():
    for entry in SCANNED:
        path = os.path.join(ROOT, entry)
        if os.path.isfile(path):
            yield path
            continue
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
            for name in sorted(files):
                yield os.path.join(folder, name)


def _lines(path):
    """The file's lines, or [] for a file that is not UTF-8 text."""
    with open(path, "rb") as f:
        data = f.read()
    if b"\0" in data:
        return []
    try:
        return data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return []


def test_no_numbered_work_periods_or_issues():
    hits = []
    for path in _text_files():
        relative = os.path.relpath(path, ROOT)
        if relative == THIS_FILE:
            continue
        for number, line in enumerate(_lines(path), 1):
            match = HISTORY_REFERENCE.search(line)
            if match:
                hits.append(f"{relative}:{number}: {match.group(0)!r} in {line.strip()[:120]}")
    assert not hits, ("references to numbered work periods or issues (say what the text means "
                      "today; the history is in git):\n" + "\n".join(hits))


@pytest.mark.parametrize("text", [
    "issue 27's done-when",
    "task 3 of issue 24, not done",
    "see issue #27",
    "fixed in (#27)",
    "Issues 24 and 27",
    "2026-11-25 (session 44): answers held",
    "The six classes again, session 47",
    "notes of session-59",
    "since stop 6 the op scans SQ8 codes",
    "the `auto` of stop 5",
    "what this work period changed",
    "so the done-when is not reached",
])
def test_the_pattern_finds_history_references(text):
    assert HISTORY_REFERENCE.search(text), text


@pytest.mark.parametrize("text", [
    "tissue",
    "an issue with the proxy",
    "issues of the parsed request",
    "version 2",
    "k=27",
    "Session 0: items 10, 11, 12, 13 with labels 2, 0, 1, 0.",
    "session 1 (4, 5) none; session 2 {6,7}",
    "candidate 0 = item 0 in session 0 with label 2",
    "early stopping after 3 evaluations",
    "stop_gradient(z) and stopwords",
    "a period of 30 s",
    "items[splits[q]:splits[q + 1]]",
    "(redone when the layout's layout.json changes)",
])
def test_the_pattern_leaves_ordinary_text_alone(text):
    assert not HISTORY_REFERENCE.search(text), text
