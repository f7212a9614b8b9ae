"""Every lesson opened as a notebook: its `# %%` cells run one by one in a real Jupyter kernel.

Each observation cell must print its own observation (its [n] title and its check lines, all
`ok`) when it runs, not only at the end, and the last cell prints the closing count. One kernel
serves all lessons (a `%reset -f` between them), so torch is imported once.
"""

import re
import sys

import pytest

from tests.support import ROOT
from tensor_features.lab.lessons import lesson_paths, short_name

jupytext = pytest.importorskip("jupytext")
jupyter_client = pytest.importorskip("jupyter_client")


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
        while True:
            message = self.client.get_iopub_msg(timeout=timeout)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                text.append(content["text"])
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


@pytest.mark.parametrize("path", lesson_paths(), ids=lambda p: short_name(p.name))
def test_each_cell_shows_its_observation(kernel, path):
    notebook = jupytext.read(path)
    cells = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    assert len(cells) >= 3, "setup, at least one observation, the end"
    kernel.run("%reset -f")
    seen = 0
    for source in cells:
        text, errors = kernel.run(source)
        assert not errors, f"{path.name}: {errors}\n{source[:400]}"
        assert "FAIL" not in text, text
        if re.search(r"^lab\.run\(", source, re.M):
            seen += 1
            assert re.search(rf"^\[{seen}\] ", text, re.M), f"cell {seen} printed no observation:\n{text}"
            assert re.search(r"^  ok  ", text, re.M), text
    assert seen > 0
    assert re.search(rf"^(\d+)/\1 checks match across {seen} observations\.$", text, re.M), text


def test_make_notebook_makes_the_notebook_and_finds_jupyter_lab(tmp_path):
    # The README's notebook path, as a learner runs it, with `jupyter lab --version` in place of
    # opening a browser: the .ipynb is written where NOTEBOOKS says, and JupyterLab starts from
    # the environment that make built (this interpreter's).
    import json
    import subprocess

    # -o: take the environment as it is (never pip, which would reach the network).
    result = subprocess.run(["make", "-s", "-o", f"{sys.prefix}/.installed-dev", "-o", "package", "notebook",
                             "L=05_gradient_computation_backward", f"VENV={sys.prefix}",
                             f"NOTEBOOKS={tmp_path}", "NOTEBOOK_ARGS=--version"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"4\.\d+\.\d+", result.stdout.strip().splitlines()[-1])
    notebook = json.loads((tmp_path / "05_gradient_computation_backward.ipynb").read_text())
    code = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert any("y.backward()" in cell for cell in code) and len(code) >= 7  # one cell per observation
