"""README's "Where a query goes" table names files that exist (after a move, the table fails
here instead of sending a newcomer to a file that is gone), and its servable rows are the
servable's stages in their order."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PATH_LIKE = re.compile(r"^[A-Za-z0-9_./-]+$")


def _table_rows():
    """[(step cell, file cell, what cell)] of the table's body (header and separator dropped)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Where a query goes", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(rows) > 10, "the table is gone from README.md"
    assert set(rows[1]) <= set("|- "), f"the table's second line is not its separator: {rows[1]}"
    return [tuple(cell.strip() for cell in row.split("|")[1:4]) for row in rows[2:]]


def _table_cells():
    return [files for _, files, _ in _table_rows()]


def _resolve(name: str, folders) -> str:
    """The path `name` stands for: from the root, or inside a folder named earlier in its cell
    (or a parent of one: `kernels/x.cc` after `tokenizer_cc/ops/y.cc`); "" when none exists."""
    candidates = [name]
    for folder in folders:
        while folder:
            candidates.append(os.path.join(folder, name))
            folder = os.path.dirname(folder)
    return next((c for c in candidates if os.path.exists(os.path.join(ROOT, c))), "")


def test_every_file_in_the_query_path_table_exists():
    missing = []
    for cell in _table_cells():
        folders = []
        for name in re.findall(r"`([^`]+)`", cell):
            if not PATH_LIKE.match(name) or not ("/" in name or "." in name):
                continue
            path = _resolve(name, folders)
            if not path:
                missing.append(name)
                continue
            folders.insert(0, path.rstrip("/") if name.endswith("/") else os.path.dirname(path))
    assert not missing, f"README.md 'Where a query goes' names missing files: {missing}"


def test_the_reader_catches_a_missing_file():
    assert _resolve("kernels/faiss_kernels.cc", ["search_cc/ops"]) == \
        "search_cc/kernels/faiss_kernels.cc"
    assert _resolve("kernels/no_such_kernels.cc", ["search_cc/ops"]) == ""


def test_the_servable_rows_are_the_stages_in_order():
    from dpsr_tf.export.stages import pipeline  # pylint: disable=import-outside-toplevel
    in_readme = [re.fullmatch(r"3 `(\w+)`", step).group(1) for step, _, _ in _table_rows()
                 if step.startswith("3 ")]
    assert in_readme == [stage.NAME for stage in pipeline.STAGES]
    for step, files, _ in _table_rows():
        if step.startswith("3 "):
            name = step.split("`")[1]
            assert f"dpsr_tf/export/stages/{name}.py" in files, (step, files)
