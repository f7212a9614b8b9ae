"""A lesson as a Jupyter notebook: `python -m tensor_features.lab.notebook LESSON.py OUT.ipynb`.

jupytext turns the lesson's `# %%` cells into notebook cells. What it cannot know is that the
lesson's module docstring is its introduction: left as it is, the first cell would show it as an
escaped string full of \\n. Here that cell becomes a Markdown cell with the text itself (in a
kernel, Lab.start reads no command line, so it has no --help to show the text in).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tensor_features.cli import OneLineArgumentParser


def lesson_notebook(path: Path):
    """The lesson as an nbformat notebook: its introduction as Markdown, then its `# %%` cells."""
    import jupytext  # a test tool (requirements-dev.txt): imported only when a notebook is made
    from nbformat.v4 import new_markdown_cell

    source = path.read_text(encoding="utf-8")
    notebook = jupytext.reads(source, fmt="py:percent")
    introduction = ast.get_docstring(ast.parse(source), clean=True)
    first = notebook.cells[0] if notebook.cells else None
    if introduction and first is not None and first.cell_type == "code":
        body = ast.parse(first.source).body if first.source.strip() else []
        if len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            title, _, rest = introduction.partition("\n")
            notebook.cells[0] = new_markdown_cell(f"# {title}\n\n{rest.strip()}".strip())
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="python -m tensor_features.lab.notebook",
                                   description="Write a lesson as a Jupyter notebook (.ipynb).")
    parser.add_argument("lesson", type=Path, help="the lesson's .py file")
    parser.add_argument("output", type=Path, help="the .ipynb file to write (its folder must exist)")
    args = parser.parse_args(argv)
    if not args.lesson.is_file():
        parser.error(f"{args.lesson}: no such lesson file")
    if not args.output.parent.is_dir():
        parser.error(f"{args.output}: there is no folder {str(args.output.parent)!r} to write it into")
    if args.output.is_dir():
        parser.error(f"{args.output}: is a folder; give the notebook's file name")
    import nbformat

    text = nbformat.writes(lesson_notebook(args.lesson))
    partial = args.output.with_name(f".{args.output.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(args.output)  # whole or not at all
    except OSError as err:
        partial.unlink(missing_ok=True)
        parser.exit(1, f"{parser.prog}: error: {args.output} cannot be written ({err.strerror})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
