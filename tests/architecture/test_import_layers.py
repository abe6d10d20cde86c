"""The layer order of dpsr_tf, read off every module's imports (top-level and inside functions).

A module may import modules of a lower layer, and of its own layer only inside its own package;
nothing may import upwards, nothing imports the CLI, and there is no import cycle between modules
(a deferred import inside a function counts: it hides a cycle, it does not remove it). Module names
written as strings (`importlib.import_module("dpsr_tf.x")`, `python -m dpsr_tf.x`) count as edges.
"""
import ast
import functools
import os
import re
from typing import Dict, List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "dpsr_tf"

# Lowest first, along the query's path; a module takes the layer of its longest listed prefix.
LAYERS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("base", ("dpsr_tf", "dpsr_tf.op_library", "dpsr_tf.config_json", "dpsr_tf.parent_death")),
    ("tokenization", ("dpsr_tf.tokenization",)),
    ("data", ("dpsr_tf.data",)),
    ("model", ("dpsr_tf.model",)),
    ("training", ("dpsr_tf.training",)),
    ("search", ("dpsr_tf.search",)),
    ("indexing", ("dpsr_tf.indexing",)),
    ("rewriting", ("dpsr_tf.rewriting",)),  # query rewrites: trained offline, looked up by the servable
    ("ranking", ("dpsr_tf.ranking",)),
    ("export", ("dpsr_tf.export",)),
    ("evaluation", ("dpsr_tf.evaluation",)),
    ("serving", ("dpsr_tf.serving",)),  # what the two servers share
    # The model server's rooms, lowest first: model versions loaded and their signatures; running
    # a signature (queues, batches, chunks, budgets); the API (each call once, gRPC and REST).
    ("model server lifecycle", ("dpsr_tf.serving.model_server.lifecycle",)),
    ("model server runs", ("dpsr_tf.serving.model_server.runs",)),
    ("model server api", ("dpsr_tf.serving.model_server.api",)),
    # The model server's process (model_server/server.py) and the proxy; APART keeps them apart.
    ("servers", ("dpsr_tf.serving.model_server", "dpsr_tf.serving.proxy")),
    ("report", ("dpsr_tf.report",)),
    # Demo and synthetic data: only the CLI (and tests, benchmarks) use them.
    ("scaffolding", ("dpsr_tf.demo",)),
    ("cli", ("dpsr_tf.cli",)),
)

# (importer, imported) edges allowed against the order, each with its reason.
ALLOWED: Dict[Tuple[str, str], str] = {
    ("dpsr_tf.demo.server_processes", "dpsr_tf.cli"):
        "starts `python -m dpsr_tf.cli serve|proxy` as child processes (the deployment under "
        "test); a string, not an import, in scaffolding that only tests, benchmarks and the "
        "demo use",
}

# Folders that never import each other, whatever their layers: the proxy and the model server
# (its rooms rank below the proxy, yet the proxy must not use them).
APART: Tuple[Tuple[str, str], ...] = (("dpsr_tf.serving.model_server", "dpsr_tf.serving.proxy"),)

MODULE_NAME = re.compile(r"^dpsr_tf(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@functools.lru_cache(maxsize=None)
def _modules() -> Dict[str, str]:
    """Module name -> file path of every .py module of the package."""
    out = {}
    for folder, dirs, files in os.walk(os.path.join(ROOT, PACKAGE)):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: Dict[str, str]) -> str:
    """The longest existing module that `name` (a module, or a module's attribute) names."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _is_constant(node) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _imports(module: str, path: str, modules: Dict[str, str]) -> List[Tuple[str, int]]:
    """(imported dpsr_tf module, line) of every import of `module`, at any depth."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    is_package = path.endswith("__init__.py")
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import mod` imports pkg.mod when it is a module, else pkg itself.
            names = [f"{prefix}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and _is_constant(node.args[0]) and \
                getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "import_module", "__import__"):
            names = [node.args[0].value]
        elif isinstance(node, (ast.List, ast.Tuple)):  # a command line: [..., "-m", "dpsr_tf.x"]
            items = node.elts
            names = [b.value for a, b in zip(items, items[1:])
                     if _is_constant(a) and a.value == "-m" and _is_constant(b)]
        for name in names:
            if not MODULE_NAME.match(name):
                continue
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                found.append((_resolve(name, modules), node.lineno))
    return found


def _layer_of(module: str) -> Tuple[int, str]:
    return _placement(module)[:2]


def _placement(module: str) -> Tuple[int, str, str]:
    """(rank, layer, the listed prefix that placed it): its longest listed prefix."""
    best = (-1, -1, "", "")
    for rank, (layer, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                depth = prefix.count(".") + 1
                if prefix == PACKAGE and module != PACKAGE and module.count(".") > 1:
                    continue  # the package root names its own top-level modules only
                if depth > best[0]:
                    best = (depth, rank, layer, prefix)
    assert best[0] >= 0, f"{module} is in no layer of LAYERS: add it to the table"
    return best[1], best[2], best[3]


def _folder(module: str, modules: Dict[str, str]) -> str:
    """The folder of `module` for the same-layer rule: the prefix of LAYERS that placed it
    (dpsr_tf.serving.proxy and dpsr_tf.serving.model_server are two folders of one layer; the
    model server's rooms are folders of their own layers)."""
    del modules
    return _placement(module)[2]


@functools.lru_cache(maxsize=None)
def _graph() -> Dict[str, Set[Tuple[str, int]]]:
    modules = _modules()
    return {m: set(_imports(m, p, modules)) for m, p in modules.items()}


def test_every_module_is_in_a_layer():
    for module in _modules():
        _layer_of(module)


def test_imports_follow_the_layer_order():
    modules = _modules()
    wrong = []
    for module, edges in _graph().items():
        rank, layer = _layer_of(module)
        for imported, line in edges:
            if imported == module or (module, imported) in ALLOWED:
                continue
            other_rank, other_layer = _layer_of(imported)
            same_folder = _folder(module, modules) == _folder(imported, modules)
            if other_rank > rank or (other_rank == rank and not same_folder):
                wrong.append(f"{os.path.relpath(modules[module], ROOT)}:{line}: {module} "
                             f"({layer}) imports {imported} ({other_layer})")
    assert not wrong, "imports against the layer order (tests/architecture/" \
                      "test_import_layers.py LAYERS):\n" + "\n".join(sorted(wrong))


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_apart_folders_import_neither_other():
    modules = _modules()
    wrong = []
    for module, edges in _graph().items():
        for imported, line in edges:
            for a, b in APART:
                if (_under(module, a) and _under(imported, b)) or \
                        (_under(module, b) and _under(imported, a)):
                    wrong.append(f"{os.path.relpath(modules[module], ROOT)}:{line}: {module} "
                                 f"imports {imported}")
    assert not wrong, "imports between folders kept apart (APART):\n" + "\n".join(sorted(wrong))


_MS = "dpsr_tf.serving.model_server"


@pytest.mark.parametrize("lower, upper", [
    ("dpsr_tf.serving.errors", f"{_MS}.lifecycle.manager"),
    (f"{_MS}.lifecycle.servable", f"{_MS}.runs.batching"),
    (f"{_MS}.runs.run_queue", f"{_MS}.api.server_core"),
    (f"{_MS}.api.rest", f"{_MS}.server"),
])
def test_the_model_server_rooms_are_ordered(lower, upper):
    """api -> runs -> lifecycle: a room imports only the rooms below it, the process all three;
    an import the other way is an upward edge."""
    assert _layer_of(lower)[0] < _layer_of(upper)[0]
    assert _folder(lower, {}) != _folder(upper, {})


def test_nothing_outside_the_cli_imports_it():
    wrong = []
    for module, edges in _graph().items():
        if module == "dpsr_tf.cli" or module.startswith("dpsr_tf.cli."):
            continue
        for imported, line in edges:
            if imported.startswith("dpsr_tf.cli") and (module, imported) not in ALLOWED:
                wrong.append(f"{module}:{line} -> {imported}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_modules():
    # A package's __init__ importing its own submodules is how it re-exports them; a submodule
    # importing its package's __init__ then is no cycle of jobs.
    graph = {m: {i for i, _ in edges if i != m and not i.startswith(m + ".")}
             for m, edges in _graph().items()}
    state: Dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: List[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_layer_rule_catches_a_bad_edge(tmp_path):
    """The reader itself: a deferred upward import and a string module name are both edges."""
    path = tmp_path / "m.py"
    path.write_text("import logging\nlog = logging.getLogger('dpsr_tf.cli')\n"
                    "def f():\n    from dpsr_tf.training import driver\n"
                    "    return ['python', '-m', 'dpsr_tf.cli']\n")
    modules = {"dpsr_tf.model.m": str(path), "dpsr_tf.training.driver": "",
               "dpsr_tf.cli": ""}
    assert sorted(_imports("dpsr_tf.model.m", str(path), modules)) == [
        ("dpsr_tf.cli", 5), ("dpsr_tf.training.driver", 4)]
    assert _layer_of("dpsr_tf.model.m")[0] < _layer_of("dpsr_tf.training.driver")[0]


def test_every_allowed_exception_is_still_needed():
    graph = _graph()
    for importer, imported in ALLOWED:
        assert imported in {i for i, _ in graph.get(importer, ())}, \
            f"ALLOWED lists {importer} -> {imported}, which no longer exists: remove it"


def test_every_imported_package_module_exists():
    """`from dpsr_tf.x.y import z` and `import dpsr_tf.x.y` name modules that exist (after a
    move, a stale path would otherwise resolve to its package and pass the layer rule)."""
    modules = _modules()
    roots = [os.path.join(ROOT, d) for d in (PACKAGE, "tests", "bench")]
    missing = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.ImportFrom) and node.level == 0:
                        wanted = [node.module or ""]
                    elif isinstance(node, ast.Import):
                        wanted = [alias.name for alias in node.names]
                    else:
                        continue
                    for module in wanted:
                        if module.startswith(PACKAGE + ".") and module not in modules:
                            missing.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: {module}")
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)
