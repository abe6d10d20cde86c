"""Every import inside a function of dpsr_tf says why it is not at the top of its module.

Imports belong at the top. One stays inside a function only for a reason: an optional
dependency (an install hint follows when it is missing), a module built by `make build`, or
TensorFlow kept out of a process until it is needed (the model server sets TensorFlow's
environment before it loads). The reason is a comment on the import's line or on the line
above it; a comment line above a run of consecutive imports covers the run. Lint directives
(`pylint: disable=...`, `noqa`) are no reason.
"""
import ast
import io
import os
import re
import tokenize
from typing import List, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "dpsr_tf"

_DIRECTIVE = re.compile(r"(pylint:\s*[a-z-]+=[\w\-, ]+|noqa(:\s*[A-Z]+\d+(,\s*[A-Z]+\d+)*)?|"
                        r"type:\s*ignore(\[[\w\-, ]+\])?)")


def _reason(comment: str) -> str:
    """The words of a comment once lint directives are taken out ('' for none)."""
    return _DIRECTIVE.sub("", comment).strip(" #-:;,")


def _comment(line: str) -> str:
    """The comment of a source line ('' for none), by its tokens: a '#' in a string is none."""
    try:
        for token in tokenize.generate_tokens(io.StringIO(line).readline):
            if token.type == tokenize.COMMENT:
                return token.string[1:]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return ""


def deferred_imports(source: str) -> List[Tuple[int, bool]]:
    """(line, has a reason) of every import inside a function of `source`."""
    tree = ast.parse(source)
    lines = source.split("\n")
    found = []

    def visit(node, in_function: bool) -> None:
        body_imports = []
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                body_imports.append(child)
            visit(child, in_function or isinstance(child, (ast.FunctionDef,
                                                            ast.AsyncFunctionDef)))
        for imp in body_imports:
            found.append((imp.lineno, _has_reason(lines, imp.lineno)))

    visit(tree, False)
    return sorted(found)


def _has_reason(lines: List[str], lineno: int) -> bool:
    """A reason on the import's own line, or on the comment line above it or above the run of
    import lines it belongs to."""
    if _reason(_comment(lines[lineno - 1])):
        return True
    above = lineno - 2
    while above >= 0 and re.match(r"\s*(from\s+\S+\s+)?import\s", lines[above]):
        above -= 1
    if above >= 0 and lines[above].strip().startswith("#"):
        return bool(_reason(lines[above].strip()[1:]))
    return False


def _package_files():
    for folder, dirs, files in os.walk(os.path.join(ROOT, PACKAGE)):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def test_every_deferred_import_says_why():
    missing = []
    for path in _package_files():
        with open(path, encoding="utf-8") as f:
            source = f.read()
        for line, has_reason in deferred_imports(source):
            if not has_reason:
                missing.append(f"{os.path.relpath(path, ROOT)}:{line}: "
                               f"{source.split(chr(10))[line - 1].strip()}")
    assert not missing, (
        "imports inside functions without a reason: move them to the top of the module, or "
        "say on the line (or the line above) why they must wait (optional dependency, built "
        "extension, TensorFlow kept out of a process until needed):\n" + "\n".join(missing))


@pytest.mark.parametrize("source, expected", [
    ("import os\n", []),  # module level: not deferred
    ("def f():\n    import faiss  # optional: the faiss-cpu wheel\n", [(2, True)]),
    ("def f():\n    # optional: the faiss-cpu wheel\n    import faiss\n", [(3, True)]),
    ("def f():\n    import faiss\n", [(2, False)]),
    ("def f():\n    import faiss  # pylint: disable=import-outside-toplevel\n", [(2, False)]),
    ("def f():\n    import faiss  # noqa: F401\n", [(2, False)]),
    ("def f():\n    import faiss  # noqa: F401  optional: the wheel\n", [(2, True)]),
    ("def f():\n    # pylint: disable=import-outside-toplevel\n    import faiss\n", [(3, False)]),
    # a comment line above a run of imports covers the run, and only the run
    ("def f():\n    # TensorFlow only after the flags are checked\n    import a\n    import b\n"
     "    x = 1\n    import c\n", [(3, True), (4, True), (6, False)]),
    ("def f():\n    s = '# not a comment'; import a\n", [(2, False)]),
    ("class C:\n    def m(self):\n        from x import y  # built by `make build`\n",
     [(3, True)]),
    ("def f():\n    def g():\n        import a\n    return g\n", [(3, False)]),
])
def test_the_reader_finds_deferred_imports_and_their_reasons(source, expected):
    assert deferred_imports(source) == expected
