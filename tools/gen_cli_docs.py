"""Writes docs/cli.md, the `dpsr` command-line reference, from the absl flag definitions.

    python tools/gen_cli_docs.py           # rewrite docs/cli.md
    python tools/gen_cli_docs.py --check   # exit 1 when docs/cli.md is stale

(with the project's Python, the one tools/bootstrap.sh prints: it imports the CLI modules.)

The subcommands are those `dpsr` dispatches to (dpsr_tf/cli/main.py's SUBCOMMANDS). Their flags are
read in one child process that imports each subcommand module as `dpsr` does, starting every
time from a flag registry and module cache without any dpsr_tf flag module, so each subcommand
lists what its own module and the flag modules it imports define and nothing another subcommand
defined. Flags of absl (--helpfull, --flagfile, --logtostderr, ...) and of other libraries are
left out of the page; absl's names are kept, as `builtin`, for the test of the commands in the
docs.
"""
import argparse
import difflib
import importlib
import json
import os
import re
import subprocess
import sys
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, "docs", "cli.md")
PACKAGE = "dpsr_tf"
# os.cpu_count() while collecting: a default equal to it is shown as the machine's CPU count.
_CPU_SENTINEL = 987654321
_CPU_TEXT = "number of CPUs"


# ---------------------------------------------------------------- collection (child process)

def _is_project_module(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _forget_project_flags(flag_values) -> None:
    """Unregisters every flag a dpsr_tf module defined and drops those modules and the CLI's from
    the module cache (and their parent package), so the next import defines its flags afresh."""
    defining = set()
    for module_name, module_flags in list(flag_values.flags_by_module_dict().items()):
        if _is_project_module(module_name) and module_flags:
            defining.add(module_name)
            for flag in list(module_flags):  # the registry's own list, shrunk by delattr
                if flag.name in flag_values:
                    delattr(flag_values, flag.name)
    for name in [n for n in sys.modules if n.startswith(PACKAGE + ".cli.") or n in defining]:
        if name != PACKAGE + ".cli.main":
            package, _, leaf = name.rpartition(".")
            del sys.modules[name]
            if package in sys.modules and getattr(sys.modules[package], leaf, None) is not None:
                delattr(sys.modules[package], leaf)


def _normalise(text: str) -> str:
    """Paths of this checkout, as some help texts hold them, in a form the same on every machine."""
    return text.replace(ROOT, "<checkout>").replace(os.path.dirname(ROOT) + os.sep,
                                                    "<checkout>/../")


def _flag_type(flag) -> str:
    parser = flag.parser
    enum_values = getattr(parser, "enum_values", None)
    if enum_values:
        return "enum: " + " | ".join(str(v) for v in enum_values)
    kind = {"bool": "bool", "int": "integer", "float": "float", "string": "string"}.get(
        parser.flag_type(), parser.flag_type())
    if "list" in kind:
        kind = "list"
    return ("multi " + kind) if type(flag).__name__.startswith("Multi") else kind


def _default_text(flag) -> Optional[str]:
    value = flag.default
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value == _CPU_SENTINEL:
        return _CPU_TEXT
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return _normalise(str(value))


def _is_required(flag) -> bool:
    return any("must have a value other than None" in getattr(v, "message", "")
               for v in getattr(flag, "validators", []))


def _help(flag) -> str:
    """The flag's help on one line, without what absl adds that the type column says."""
    text = flag.help or ""
    enum_values = getattr(flag.parser, "enum_values", None)
    if enum_values:
        text = text.replace("<" + "|".join(str(v) for v in enum_values) + ">: ", "", 1)
    text = text.replace(";\n    repeat this option to specify a list of values", "")
    return _normalise(" ".join(text.split()))


def _describe(flag) -> Dict:
    return {"name": flag.name, "type": _flag_type(flag), "default": _default_text(flag),
            "required": _is_required(flag), "boolean": bool(flag.boolean), "help": _help(flag)}


def _purpose(module) -> str:
    """The module docstring's first paragraph on one line, without its `dpsr <name>:` lead."""
    paragraph = (module.__doc__ or "").strip().split("\n\n", 1)[0]
    text = " ".join(paragraph.split())
    if text.startswith("dpsr ") and ": " in text:
        text = text.split(": ", 1)[1]
    return text[:1].upper() + text[1:]


def collect_here() -> Dict:
    """Runs in the child process: every subcommand's flags, as collect() returns them."""
    os.cpu_count = lambda: _CPU_SENTINEL
    os.environ.pop("DPSR_DATASETS", None)
    from absl import app, flags  # pylint: disable=import-outside-toplevel
    app.define_help_flags()
    from dpsr_tf.cli import main  # pylint: disable=import-outside-toplevel
    flag_values = flags.FLAGS
    subcommands = []
    builtin = set()
    for name, (module_name, _) in main.SUBCOMMANDS.items():
        _forget_project_flags(flag_values)
        module = importlib.import_module(module_name)
        modules = []
        for defining, module_flags in flag_values.flags_by_module_dict().items():
            if not module_flags:  # a module whose flags _forget_project_flags unregistered
                continue
            if not _is_project_module(defining):
                if defining.startswith(("absl.app", "absl.flags", "absl.logging")):
                    builtin.update(f.name for f in module_flags)
                continue
            described = sorted((_describe(f) for f in module_flags), key=lambda d: d["name"])
            modules.append({"module": defining, "flags": described})
        modules.sort(key=lambda m: (m["module"] != module_name, m["module"]))
        subcommands.append({"name": name, "module": module_name, "purpose": _purpose(module),
                            "modules": modules})
    builtin.update(("flagfile", "undefok"))  # handled by absl's parser itself
    return {"subcommands": subcommands, "builtin": sorted(builtin)}


def collect() -> Dict:
    """Every subcommand's flags, read in one fresh child process.

    Returns:
      {"subcommands": [{"name", "module", "purpose", "modules": [{"module", "flags": [{"name",
      "type", "default" (str or None), "required", "boolean", "help"}]}]}] in dispatch order,
      the subcommand's own module first; "builtin": the absl flag names every subcommand also
      accepts (--helpfull, --flagfile, --logtostderr, ...)}.
    """
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--collect"], cwd=ROOT,
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"collecting the dpsr flags failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- rendering

def _escape(text: str) -> str:
    """Markdown text for a table cell: `|` escaped, and outside `code` spans what would start an
    HTML tag (`<step>`) or emphasis (`*`)."""
    parts = text.replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", parts[i]).replace("*", "\\*")
    return "`".join(parts)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    kept = "".join(c for c in heading.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def _table(module_flags: List[Dict]) -> List[str]:
    lines = ["| Flag | Type | Default | Help |", "|---|---|---|---|"]
    for flag in module_flags:
        if flag["required"]:
            default = "**required**"
        elif flag["default"] is None:
            default = "none"
        elif flag["default"] == _CPU_TEXT:
            default = _CPU_TEXT
        else:
            default = "`" + (flag["default"].replace("|", "\\|") or '""') + "`"
        lines.append(f"| `--{flag['name']}` | {_escape(flag['type'])} | {default} | "
                     f"{_escape(flag['help'])} |")
    return lines


def _module_path(module: str) -> str:
    return module.replace(".", "/") + ".py"


def render(data: Dict) -> str:
    """docs/cli.md's text from collect()'s data."""
    subcommands = data["subcommands"]
    # A flag module other than a subcommand's own is listed once, below, when it defines the
    # same flags wherever it is imported (it always should); otherwise under each subcommand.
    contents: Dict[str, set] = {}
    for sub in subcommands:
        for group in sub["modules"]:
            if group["module"] != sub["module"]:
                contents.setdefault(group["module"], set()).add(json.dumps(group["flags"]))
    shared = sorted(m for m, seen in contents.items() if len(seen) == 1)
    users: Dict[str, List[str]] = {m: [] for m in shared}

    lines = [
        "# `dpsr` command-line reference",
        "",
        "<!-- Generated by tools/gen_cli_docs.py from the absl flag definitions in dpsr_tf/cli/;",
        "     do not edit: run `python tools/gen_cli_docs.py` (a test fails when it is stale). -->",
        "",
        "`dpsr <subcommand> [--flags]` (`bin/dpsr` in a checkout). Each subcommand accepts the "
        "flags of its own module and of the shared flag modules it imports, listed below; "
        "boolean flags also take the `--noname` form. absl's own flags (`--helpfull`, "
        "`--flagfile`, `--logtostderr`, ...) are accepted everywhere and not listed.",
        "",
        "| Subcommand | Purpose |",
        "|---|---|",
    ]
    for sub in subcommands:
        heading = f"dpsr {sub['name']}"
        lines.append(f"| [`{sub['name']}`](#{_slug(heading)}) | {_escape(sub['purpose'])} |")
    for sub in subcommands:
        heading = f"dpsr {sub['name']}"
        required = [f"`--{f['name']}`" for g in sub["modules"] for f in g["flags"]
                    if f["required"]]
        lines += ["", f"## {heading}", "", _escape(sub["purpose"]), "",
                  f"Module: `{_module_path(sub['module'])}`. Required: "
                  f"{', '.join(required) if required else 'none'}."]
        also = []
        for group in sub["modules"]:
            if group["module"] in users:
                users[group["module"]].append(sub["name"])
                also.append(f"[`{_module_path(group['module'])}`](#{_slug(group['module'])})")
                continue
            if group["module"] != sub["module"]:
                lines += ["", f"Flags of `{_module_path(group['module'])}`:"]
            lines += [""] + _table(group["flags"])
        if not any(g["module"] == sub["module"] for g in sub["modules"]):
            lines += ["", "Its own module defines no flags."]
        if also:
            lines += ["", "Also the shared flags of " + ", ".join(also) + "."]
    if shared:
        lines += ["", "## Shared flag modules"]
        for module in shared:
            group_flags = json.loads(next(iter(contents[module])))
            used_by = ", ".join(f"`{name}`" for name in users[module])
            lines += ["", f"### {module}", "", f"`{_module_path(module)}`, imported by "
                      f"{used_by}.", ""] + _table(group_flags)
    return "\n".join(lines) + "\n"


def stale_message(data: Dict) -> Optional[str]:
    """None when docs/cli.md is what render(data) writes, else what differs and the fix."""
    want = render(data)
    try:
        with open(OUTPUT, encoding="utf-8") as f:
            have = f.read()
    except FileNotFoundError:
        have = ""
    if have == want:
        return None
    diff = "".join(list(difflib.unified_diff(have.splitlines(True), want.splitlines(True),
                                             "docs/cli.md", "generated", n=0))[:40])
    return f"docs/cli.md is stale: run python tools/gen_cli_docs.py\n{diff}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when docs/cli.md is not what this tool writes")
    parser.add_argument("--collect", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.collect:
        sys.path.insert(0, ROOT)
        print(json.dumps(collect_here(), sort_keys=True))
        return 0
    data = collect()
    if args.check:
        message = stale_message(data)
        if message:
            print(message, file=sys.stderr)
            return 1
        print("docs/cli.md is up to date")
        return 0
    with open(OUTPUT, "w", encoding="utf-8") as f:
        f.write(render(data))
    print(f"wrote {os.path.relpath(OUTPUT, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
