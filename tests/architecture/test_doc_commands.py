"""Every `dpsr <subcommand>` (or `bin/dpsr`, `python -m dpsr_tf.cli`) command in a fenced code
block of README.md and docs/*.md names a subcommand that exists and only flags it defines
(`--flag`, `--flag=value`, `[--flag]`, `--noflag` for a boolean), as read by tools/gen_cli_docs.py. A renamed
or removed flag fails here, with the page and line, instead of in a reader's terminal."""
import glob
import os
import re
import shlex
from typing import Dict, Iterator, List, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FENCE = re.compile(r"^\s*(```|~~~)")
SUBCOMMAND = re.compile(r"[a-z][a-z0-9-]*")
FLAG = re.compile(r"--([A-Za-z0-9_][A-Za-z0-9_.-]*)")
SEPARATORS = {";", "&&", "||", "|", "&", "|&", ";;"}
REDIRECTS = {"<", ">", ">>", ">&", "<&", "&>", "<<", "<<<"}


def _fenced_lines(text: str) -> Iterator[Tuple[int, List[Tuple[int, str]]]]:
    """Each fenced block's lines as (1-based line number, line)."""
    block, marker = None, None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if block is None:
            if match:
                block, marker = [], match.group(1)
        elif match and match.group(1) == marker:
            yield block
            block = None
        else:
            block.append((number, line))


def _tokens(line: str) -> List[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # an unclosed quote: plain words will do
        return line.split("#", 1)[0].split()


def _is_dpsr(tokens: List[str], i: int) -> int:
    """How many tokens from i name the dpsr command (0 when they do not)."""
    if tokens[i] == "dpsr" or tokens[i].endswith("/dpsr"):
        return 1
    if tokens[i] == "-m" and i + 1 < len(tokens) and tokens[i + 1] == "dpsr_tf.cli":
        return 2
    return 0


def commands(text: str) -> Iterator[Tuple[int, str, str]]:
    """(line, subcommand, flag name as written without `--`) for every flag of every dpsr
    command in text's fenced blocks; (line, subcommand, "") for a command without flags.
    A trailing backslash continues the command on the next line; `;`, `&&`, `|`, ... and a
    `)` that closes what the command is inside end it; comments are not read."""
    for block in _fenced_lines(text):
        sub, depth, skip_next = None, 0, False
        for number, line in block:
            stripped = line.rstrip()
            continued = stripped.endswith("\\")
            tokens = _tokens(stripped[:-1] if continued else stripped)
            i = 0
            while i < len(tokens):
                token = tokens[i]
                if sub is None:
                    width = _is_dpsr(tokens, i)
                    if width and i + width < len(tokens) \
                            and SUBCOMMAND.fullmatch(tokens[i + width]):
                        sub, depth, skip_next = tokens[i + width], 0, False
                        yield number, sub, ""
                        i += width
                    i += 1
                    continue
                if skip_next:
                    skip_next = False
                elif token in SEPARATORS or token == "--":
                    sub = None
                elif token == "(":
                    depth += 1
                elif token == ")":
                    depth -= 1
                    if depth < 0:
                        sub = None
                elif token in REDIRECTS or re.fullmatch(r"\d?[<>&]+", token):
                    skip_next = True
                else:
                    match = FLAG.match(token.lstrip("["))  # [--optional] too
                    if match:
                        yield number, sub, match.group(1)
                i += 1
            if not continued:
                sub = None


def problems(path: str, text: str, cli_flags: Dict) -> List[str]:
    """`path:line: dpsr sub: ...` for each unknown subcommand or flag in text's commands."""
    known: Dict[str, Tuple[Set[str], Set[str]]] = {}
    for sub in cli_flags["subcommands"]:
        names = {f["name"] for g in sub["modules"] for f in g["flags"]}
        booleans = {f["name"] for g in sub["modules"] for f in g["flags"] if f["boolean"]}
        known[sub["name"]] = (names, booleans)
    builtin = set(cli_flags["builtin"])
    found = []
    for number, sub, flag in commands(text):
        if sub not in known:
            if not flag:
                found.append(f"{path}:{number}: dpsr {sub}: no such subcommand")
            continue
        if not flag:
            continue
        names, booleans = known[sub]
        if flag in names or flag in builtin:
            continue
        if flag.startswith("no") and (flag[2:] in booleans or flag[2:] in builtin):
            continue
        found.append(f"{path}:{number}: dpsr {sub}: unknown flag --{flag}")
    return found


def _pages() -> List[str]:
    return ["README.md"] + sorted(os.path.relpath(p, ROOT)
                                  for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def test_every_command_in_the_docs_names_real_flags(cli_flags):
    found = []
    for page in _pages():
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            found += problems(page, f.read(), cli_flags)
    assert not found, ("commands in the docs name flags or subcommands that do not exist "
                       "(docs/cli.md lists the real ones):\n" + "\n".join(found))


SAMPLE = """\
Text with `dpsr export --not_in_a_fence` is not read.

```
bin/dpsr export --model_dir=/m \\
    --nohybrid --rrf_k 60 --no_such_flag \\
    --version=$(date +%s) --export_base=/e   # --in_a_comment
dpsr serve --port=1 | grep --count x && dpsr proxy --port 2 >/dev/null 2>&1 --nosuch
PYTHONPATH=. python -m dpsr_tf.cli tokenize --text=a [--noids] -- --after_dashes
dpsr <subcommand> --helpfull
dpsr train: step 100 --not_a_command
dpsr no-such-thing --x
```
"""


def test_the_reader_finds_each_commands_flags_and_lines():
    assert list(commands(SAMPLE)) == [
        (4, "export", ""), (4, "export", "model_dir"),
        (5, "export", "nohybrid"), (5, "export", "rrf_k"), (5, "export", "no_such_flag"),
        (6, "export", "version"), (6, "export", "export_base"),
        (7, "serve", ""), (7, "serve", "port"), (7, "proxy", ""), (7, "proxy", "port"),
        (7, "proxy", "nosuch"),
        (8, "tokenize", ""), (8, "tokenize", "text"), (8, "tokenize", "noids"),
        (11, "no-such-thing", ""), (11, "no-such-thing", "x"),
    ]


def test_a_wrong_flag_is_reported_with_its_page_line_and_subcommand(cli_flags):
    assert problems("docs/x.md", SAMPLE, cli_flags) == [
        "docs/x.md:5: dpsr export: unknown flag --no_such_flag",
        "docs/x.md:7: dpsr proxy: unknown flag --nosuch",
        "docs/x.md:11: dpsr no-such-thing: no such subcommand",
    ]
