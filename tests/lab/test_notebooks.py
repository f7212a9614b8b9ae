"""Every lesson opened as a notebook (as `make notebook` writes it): its cells run one by one in a
real Jupyter kernel.

The first cell is the introduction as Markdown. Each observation cell must print its own
observation (its [n] title and its check lines, all `ok`) when it runs, not only at the end, and
leave its local variables for the learner to inspect: after the cell, each is a global of the
kernel, holding the value the observation left, and a name a check labelled holds what the check
saw. The last cell prints the closing count. One kernel serves all lessons (a `%reset -f` between
them), so torch is imported once.
"""

import json

import re
import sys

import pytest

from tests.support import ROOT, lesson_param
from tensor_features.lab.lessons import lesson_paths, short_name
from tensor_features.lab.notebook import lesson_notebook

jupytext = pytest.importorskip("jupytext")
jupyter_client = pytest.importorskip("jupyter_client")


# Written by a tester who had not read these tests, from the lab's code alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # lesson_notebook inserts the Markdown cell instead of replacing the docstring cell: the escaped-string code cell stays as cell 2
    ('tensor_features/lab/notebook.py', 'notebook.cells[0] = new_markdown_cell(f"# {title}\\n\\n{rest.strip()}".strip())', 'notebook.cells.insert(0, new_markdown_cell(f"# {title}\\n\\n{rest.strip()}".strip()))'),
    # lesson_notebook puts the docstring in as it is: the first line is no longer a "# " Markdown heading
    ('tensor_features/lab/notebook.py', 'new_markdown_cell(f"# {title}\\n\\n{rest.strip()}".strip())', 'new_markdown_cell(introduction)'),
    # notebook main accepts a directory as the lesson: no one-line "no such lesson file" error (exit 2), a traceback instead
    ('tensor_features/lab/notebook.py', '    if not args.lesson.is_file():', '    if not args.lesson.exists():'),
]


class Kernel:
    """A Jupyter kernel running this interpreter, and a way to run one cell's code in it."""

    def __init__(self):
        from jupyter_client.manager import KernelManager

        self.manager = KernelManager()
        # Not a kernelspec lookup: the kernel must be this virtual environment's Python.
        self.manager.kernel_spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        self.manager.start_kernel(cwd=str(ROOT))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=120)

    def run(self, code: str, timeout: float = 300) -> tuple[str, list[str]]:
        """(printed text, error names) of one cell."""
        msg_id = self.client.execute(code)
        text, errors = [], []
        self.results = []  # the values the cell echoed (its last expression's, when not None)
        while True:
            message = self.client.get_iopub_msg(timeout=timeout)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                text.append(content["text"])
            elif kind == "execute_result":
                self.results.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                errors.append(f"{content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(text), errors

    def close(self):
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel():
    started = Kernel()
    yield started
    started.close()


def is_a_lone_string(source: str) -> bool:
    """A code cell that is only a string literal: a docstring, which a kernel shows escaped."""
    import ast

    body = ast.parse(source).body if source.strip() else []
    return len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)


# Run in the kernel after an observation cell: which of the observation's locals are not globals
# now (or are other objects), and which checked names hold what their check saw.
PROBE = """
import json as _json
from tensor_features.lab.core import values_match as _match
_left = {_n: _v for _n, _v in lab.seen.names.items() if _n != "lab" and not _n.startswith("_")}
print("PROBE" + _json.dumps({
    "names": sorted(_left),
    "missing": sorted(_n for _n, _v in _left.items() if globals().get(_n) is not _v),
    "as_checked": sorted(_l for _l in lab.seen if _l.isidentifier() and _l in _left
                         and _match(globals()[_l], lab.seen[_l], rtol=0, atol=0)),
}))
"""


@pytest.mark.parametrize("path", [lesson_param(p, p) for p in lesson_paths()],
                         ids=lambda p: short_name(p.name))
def test_each_cell_shows_its_observation_and_leaves_its_tensors(kernel, path):
    notebook = lesson_notebook(path)
    assert notebook.cells[0].cell_type == "markdown", "the introduction, as text"
    assert notebook.cells[0].source.startswith(f"# {path.name[:2]} ·") and "\\n" not in notebook.cells[0].source
    assert not any(cell.cell_type == "code" and is_a_lone_string(cell.source) for cell in notebook.cells), \
        "the docstring is shown once, as the Markdown cell, not also as an escaped string"
    cells = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    assert len(cells) >= 3, "setup, at least one observation, the end"
    kernel.run("%reset -f")
    seen, as_checked = 0, 0
    for source in cells:
        text, errors = kernel.run(source)
        assert not errors, f"{path.name}: {errors}\n{source[:400]}"
        assert "FAIL" not in text, text
        if re.search(r"^lab\.run\(", source, re.M):
            seen += 1
            assert re.search(rf"^\[{seen}\] ", text, re.M), f"cell {seen} printed no observation:\n{text}"
            assert re.search(r"^  ok  ", text, re.M), text
            assert kernel.results == [], f"cell {seen} echoed a value after its output"
            probe, errors = kernel.run(PROBE)
            assert not errors, errors
            left = json.loads(probe.split("PROBE", 1)[1])
            assert left["missing"] == [], f"cell {seen}: not left for the learner: {left['missing']}"
            as_checked += len(left["as_checked"])
    assert seen > 0
    assert re.search(rf"^(\d+)/\1 checks match across {seen} observations\.$", text, re.M), text
    assert as_checked > 0, "no checked name holds, after its cell, the value its check saw"


@pytest.mark.processes
def test_make_notebook_makes_the_notebook_and_finds_jupyter_lab(tmp_path):
    # The README's notebook path, as a learner runs it, with `jupyter lab --version` in place of
    # opening a browser: the .ipynb is written where NOTEBOOKS says, and JupyterLab starts from
    # the environment that make built (this interpreter's).
    import subprocess

    # -o: take the environment as it is (never pip, which would reach the network).
    result = subprocess.run(["make", "-s", "-o", f"{sys.prefix}/.installed-dev", "-o", "package", "notebook",
                             "L=05_gradient_computation_backward", f"VENV={sys.prefix}",
                             f"NOTEBOOKS={tmp_path}", "NOTEBOOK_ARGS=--version"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"4\.\d+\.\d+", result.stdout.strip().splitlines()[-1])
    notebook = json.loads((tmp_path / "05_gradient_computation_backward.ipynb").read_text())
    assert notebook["cells"][0]["cell_type"] == "markdown"
    code = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert any("y.backward()" in cell for cell in code) and len(code) >= 7  # one cell per observation


def test_the_notebook_command_refuses_what_is_no_lesson_in_one_line(tmp_path, capsys):
    from tensor_features.lab.notebook import main

    lesson = ROOT / "05_gradient_computation_backward.py"
    for argv in ([str(tmp_path), str(tmp_path / "a.ipynb")],  # a folder is no lesson file
                 [str(tmp_path / "none.py"), str(tmp_path / "a.ipynb")],
                 [str(lesson), str(tmp_path / "no-such-folder" / "a.ipynb")],
                 [str(lesson), str(tmp_path)]):  # the output is a folder
        with pytest.raises(SystemExit) as done:
            main(argv)
        err = capsys.readouterr().err
        assert done.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert main([str(lesson), str(tmp_path / "b.ipynb")]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["b.ipynb"]  # whole, no partial file left
