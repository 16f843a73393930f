"""The README's values table, generated from the `# --` comments of values.yaml (helm-docs' convention).

A comment block starting with ``# -- `` documents the key on the line right after it; further
``#`` lines continue the description, and a ``# @default -- text`` line replaces the default
shown (for long documents). A documented mapping is one row; its children get rows of their own
only when they carry their own ``# --`` comment. The default column is the value as JSON, read
from the file with PyYAML.

    python deploy/helm/streams/values_table.py --write   # rewrite README.md's table
    python deploy/helm/streams/values_table.py --check   # exit 1 if README.md's table is stale

The table sits between ``<!-- values-table:start -->`` and ``<!-- values-table:end -->``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(\s|$)")


def documented(text: str) -> list[tuple[str, str, str | None]]:
    """(dotted key, description, default override) for every ``# --`` comment, in file order."""
    rows: list[tuple[str, str, str | None]] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    comment: list[str] | None = None
    default: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# -- "):
            comment, default = [stripped[5:]], None
            continue
        if stripped.startswith("# @default -- ") and comment is not None:
            default = stripped[len("# @default -- "):]
            continue
        if stripped.startswith("#") and comment is not None:
            comment.append(stripped.lstrip("#").strip())
            continue
        m = KEY.match(line)
        if m is None:
            if stripped and not stripped.startswith("-"):
                comment = None
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [m["key"]])
        stack.append((indent, m["key"]))
        if comment is not None:
            rows.append((path, " ".join(comment), default))
        comment, default = None, None
    return rows


def lookup(values: dict, path: str):
    node = values
    for part in path.split("."):
        node = node[part]
    return node


def cell(text: str) -> str:
    """A table cell: pipes escaped, so GitHub keeps every column."""
    return text.replace("|", "\\|")


def table(values_path: Path = HERE / "values.yaml") -> str:
    """The Markdown table (header included) for ``values_path``."""
    text = values_path.read_text()
    values = yaml.safe_load(text)
    lines = ["| value | default | description |", "| --- | --- | --- |"]
    for path, description, default in documented(text):
        shown = default if default is not None else json.dumps(lookup(values, path), ensure_ascii=False)
        lines.append(f"| `{path}` | {cell(f'`{shown}`' if default is None else shown)} | {cell(description)} |")
    return "\n".join(lines) + "\n"


def replace_table(readme: str, new: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{new}{END}{tail}"


def main(argv: list[str]) -> int:
    readme_path = HERE / "README.md"
    readme = readme_path.read_text()
    updated = replace_table(readme, table())
    if argv[1:] == ["--write"]:
        readme_path.write_text(updated)
        return 0
    if argv[1:] == ["--check"]:
        if updated != readme:
            print(f"{readme_path}: values table is stale; run python {Path(__file__).name} --write", file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
