"""The lab as a web book: every lesson executed, with its checks, pictures and Try lines.

    python -m tensor_features.lab.book [--out book] [--jobs N] [--no-trainer] [LESSON.py ...]

builds a static site (open OUT/index.html in a browser, no server needed): an index with the
path 01 -> 09 and the README's quick start, one page per lesson, a trainer page and a benchmark
page. `make book` is this command.

Each lesson page is the lesson's notebook (tensor_features/lab/notebook.py, through jupytext),
executed cell by cell in a fresh Jupyter kernel (nbclient) and written as HTML by nbconvert's
HTML exporter with the "lab" template (a thin template of our own on top, in book_assets/, adds
the links between pages, marks each check line `ok` or `FAIL`, and loads nothing from the
network). So a page shows what ran when it was built: the introduction, each cell's code, its
printed output, the graph lens's SVG pictures inline, the closing count and the Try lines, each
with what it promises. The trainer page runs the trainer three times in a kernel (the default,
--loss sobolev, --sweep) and shows its reports and plots; the benchmark page is the latest
table in docs/performance.md with the machine line that labels it.

The build fails (exit code 1, one line naming the lesson) when a lesson's check disagrees, a
cell raises, or a lesson never prints its closing count; nothing is written then. The book is
built in a temporary folder beside OUT and takes OUT's place only when every page is made:
whole or not at all. Pages are made --jobs at a time, each in its own kernel.
"""

from __future__ import annotations

import argparse
import html
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from tensor_features.cli import OneLineArgumentParser, cannot_write_into, int_in_range
from tensor_features.lab.lessons import ROOT, lesson_paths, short_name

ASSETS = Path(__file__).resolve().parent / "book_assets"
TEMPLATE = "book"  # book_assets/templates/book: nbconvert's lab template, with the book's links
CELL_TIMEOUT = 600  # seconds one cell may run (lesson 09 starts a two-process world)
FAILED_COUNT = re.compile(r"^\d+/\d+ checks match; these do not:", re.M)
GOOD_COUNT = re.compile(r"^(\d+)/\1 checks match across \d+ observations?\.", re.M)
# The kernel runs a lesson as a learner would: LAB_FORCE_AGREE (make mutate's) would make every
# check agree, and LAB_SUMMARY would make it append to someone's summary file.
KERNEL_ENV_DROPPED = ("LAB_FORCE_AGREE", "LAB_SUMMARY")


class PageFailed(Exception):
    """A page could not be made; the message is the one line the build ends with."""


@dataclass(frozen=True)
class Link:
    href: str
    text: str


@dataclass(frozen=True)
class Page:
    """One page of the book: its file name, its title, the pages before and after it, and where
    the clone is (the book links to its READMEs and docs/ where they are, not to copies)."""

    file: str
    title: str
    previous: Link | None = None
    next: Link | None = None
    clone: str = ".."  # the clone's root as a link from the book's folder (the READMEs, docs/)


# -- running a notebook and writing it as HTML ------------------------------------------------

def _execute(notebook, cwd: Path, name: str):
    """Run every cell of notebook in a fresh kernel of this interpreter; PageFailed on an error."""
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    manager = KernelManager()
    # Not a kernelspec lookup: the kernel must be this environment's Python (as in the tests).
    manager.kernel_spec.argv = [sys.executable, "-m", "ipykernel_launcher",
                                "-f", "{connection_file}"]
    env = {key: value for key, value in os.environ.items() if key not in KERNEL_ENV_DROPPED}
    client = NotebookClient(notebook, km=manager, timeout=CELL_TIMEOUT, allow_errors=False,
                            shutdown_kernel="immediate", resources={"metadata": {"path": str(cwd)}})
    try:
        # The kernel's own log (its transport, its shutdown) is no part of the page: what the
        # lesson prints, stderr included, comes over the kernel's channels.
        # cleanup_kc: stop the kernel afterwards, though the manager is ours (nbclient keeps alive
        # the kernels of a manager it was given).
        client.execute(env=env, cwd=str(cwd), stderr=subprocess.DEVNULL, cleanup_kc=True)
    except CellExecutionError as error:
        message = " ".join(str(error.evalue).split())
        raise PageFailed(f"{name}: a cell raised {error.ename}: {message}") from None
    except (CellTimeoutError, DeadKernelError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise PageFailed(f"{name}: {first}") from None
    return notebook


def _stdout(notebook) -> str:
    """Everything the notebook's cells printed to stdout, in order."""
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", ())
                   if output.get("output_type") == "stream" and output.get("name") == "stdout")


def mark_checks(text: str) -> str:
    """Printed output (already HTML-escaped) with each line a lesson gives meaning to wrapped in
    a span the stylesheet colours: a check `ok` or `FAIL`, an observation's title, the closing
    count, a Try line."""
    kinds = ((re.compile(r"^  ok  "), "check ok"), (re.compile(r"^FAIL  "), "check fail"),
             (re.compile(r"^\[\d+\] "), "observation"),
             (re.compile(r"^\d+/\d+ checks match"), "count"), (re.compile(r"^Try \d+: "), "try"))
    lines = []
    for line in text.split("\n"):
        kind = next((name for pattern, name in kinds if pattern.match(line)), None)
        lines.append(f'<span class="{kind}">{line}</span>' if kind else line)
    return "\n".join(lines)


def _exporter():
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name=TEMPLATE,
                            extra_template_basedirs=[str(ASSETS / "templates")],
                            exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_filter("mark_checks", mark_checks)
    return exporter


def write_page(notebook, page: Page, folder: Path) -> None:
    """The executed notebook as folder/page.file, nbconvert's HTML with the book's links."""
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    # One stream per cell, so that no printed line is split between two (and marked wrongly).
    notebook, _ = CoalesceStreamsPreprocessor().preprocess(notebook, {})
    notebook.metadata["title"] = page.title
    resources = {"metadata": {"name": page.title},
                 "book": {"page": page, "korean": f"{page.clone}/README.ko.md"}}
    body, _ = _exporter().from_notebook_node(notebook, resources=resources)
    (folder / page.file).write_text(body, encoding="utf-8")


def markdown_notebook(*texts: str):
    """A notebook of Markdown cells (the pages that run nothing: the index, the benchmark)."""
    from nbformat.v4 import new_markdown_cell, new_notebook

    return new_notebook(cells=[new_markdown_cell(text) for text in texts])


# -- the pages ---------------------------------------------------------------------------------

def lesson_title(path: Path) -> str:
    """The first paragraph of the lesson's docstring, on one line ('05 · backward: how a ...')."""
    import ast

    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or path.stem
    return " ".join(docstring.strip().split("\n\n")[0].split())


def build_lesson_page(path: Path, page: Page, folder: Path) -> str:
    """Run the lesson as a notebook and write its page; its closing count, or PageFailed."""
    from tensor_features.lab.notebook import lesson_notebook

    try:
        notebook = lesson_notebook(path)
    except Exception as error:  # jupytext or ast could not read it
        raise PageFailed(f"{path.name}: cannot be read as a notebook ({error})") from None
    # From the clone's root, as the notebook test runs a lesson (its source and assets are found).
    _execute(notebook, ROOT, path.name)
    printed = _stdout(notebook)
    failed = FAILED_COUNT.search(printed)
    if failed:
        # finish() lists the disagreeing checks under that line, two spaces in; Try lines follow.
        after = printed[failed.end():].lstrip("\n").splitlines()
        disagreeing = [line.strip() for line in itertools.takewhile(
            lambda line: line.startswith("  "), after)]
        first = disagreeing[0] if disagreeing else ""
        more = f" (and {len(disagreeing) - 1} more)" if len(disagreeing) > 1 else ""
        raise PageFailed(f"{path.name}: {failed.group(0)} {first}{more}".rstrip())
    good = GOOD_COUNT.search(printed)
    if good is None:
        raise PageFailed(f"{path.name}: it never printed its closing count (N/N checks match)")
    write_page(notebook, page, folder)
    return good.group(0)


# The trainer page: (heading, what the run shows, its flags; the last flag names its plot folder).
TRAINER_RUNS = (
    ("The default run", "the original training loop (a manual update under `torch.no_grad()`) "
     "beside `torch.optim.SGD`, compared with the exact least-squares optimum",
     ["--plot", "default"]),
    ("A custom loss: --loss sobolev", "the derivative f′ as a second target; f′ comes from one "
     "batched VJP with `create_graph=True`, so each step is a double backward",
     ["--loss", "sobolev", "--plot", "sobolev"]),
    ("The degree sweep: --sweep", "feature dimension against convergence speed",
     ["--sweep", "--plot", "sweep"]),
)


def build_trainer_page(page: Page, folder: Path) -> str:
    """Run the trainer (TRAINER_RUNS) in a kernel, in a temporary folder, and write its page."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    cells = [new_markdown_cell(
        "# The Tensor Feature Trainer\n\n"
        "Polynomial features `[x, x², x³]` and linear regression on y = x² + noise, trained with "
        "the original description's loop and compared with the exact optimum. Each run below is "
        "`python -m tensor_features.train` with the flags shown, executed in a kernel when this "
        "book was built; its report is what it printed, the pictures are the plots it wrote.")]
    for title, what, argv in TRAINER_RUNS:
        flags = " ".join(argv)
        cells.append(new_markdown_cell(
            f"## {title}\n\n{what}: `python -m tensor_features.train {flags}`"))
        cells.append(new_code_cell(
            f"from tensor_features.train import main\n\nassert main({argv!r}) == 0"))
        cells.append(new_code_cell(
            "from pathlib import Path\nfrom IPython.display import Image, display\n\n"
            f"for plot in sorted(Path({argv[-1]!r}).glob('*.png')):\n"
            "    print(plot.name)\n    display(Image(filename=plot))"))
    notebook = new_notebook(cells=cells)
    with tempfile.TemporaryDirectory(prefix="book-trainer-") as cwd:
        _execute(notebook, Path(cwd), "the trainer")
    write_page(notebook, page, folder)
    return "trainer: every run exited 0"


def bench_markdown(text: str) -> str:
    """The latest table of docs/performance.md: its "## This run" section up to the next
    heading, which holds the machine line; PageFailed when either is missing."""
    section = re.search(r"^## This run.*?(?=^## )", text, re.M | re.S)
    if section is None or not re.search(r"^machine: ", section.group(0), re.M):
        raise PageFailed("docs/performance.md: no '## This run' section with a 'machine:' line")
    return section.group(0).strip()


def build_bench_page(page: Page, folder: Path) -> str:
    """The benchmark page: the latest table (bench_markdown), labelled with its machine."""
    source = ROOT / "docs" / "performance.md"
    try:
        table = bench_markdown(source.read_text(encoding="utf-8"))
    except OSError as error:
        raise PageFailed(f"docs/performance.md cannot be read ({error.strerror})") from None
    machine = re.search(r"^machine: (.*)$", table, re.M).group(1)
    intro = ("# The benchmark (`make bench`)\n\n"
             f"The latest table of [docs/performance.md]({page.clone}/docs/performance.md), "
             f"measured on **{machine}**. It was not measured when this book was built: times "
             "belong to the machine that made them. What each row shows is in "
             "docs/performance.md; `make bench` makes the table again.")
    write_page(markdown_notebook(intro, table), page, folder)
    return f"bench: the table of {machine.split(',')[0]}"


def quick_start(readme: str, clone: str = "..") -> str:
    """The README's quick start (from '**Quick start.**' to the first '---'), links made relative
    to the book's folder (clone: the clone's root, seen from there)."""
    start = readme.find("**Quick start.**")
    end = readme.find("\n---", start)
    if start < 0 or end < 0:
        raise PageFailed("README.md: no '**Quick start.**' paragraph ending at a '---' line")
    text = readme[start:end].strip()
    return re.sub(r"\]\((?!https?:|#|/)([^)]+)\)", lambda link: f"]({clone}/{link.group(1)})", text)


def chapter_name(path: Path) -> str:
    """'05_gradient_computation_backward.py' -> 'gradient computation' (the file name's middle)."""
    lesson = short_name(path.name).split(" ", 1)[1]
    return path.stem[3:-len(lesson) - 1].replace("_", " ") or lesson.replace("_", " ")


def build_index(lessons: list[Path], pages: dict[str, Page], folder: Path, trainer: bool) -> None:
    index = Page("index.html", "Autograd Feature Lab", clone=pages["bench"].clone)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    intro = ("# Autograd Feature Lab\n\n"
             f"**English** · [한국어 (Korean: README.ko.md)]({index.clone}/README.ko.md)\n\n"
             "An autograd lab for people who use PyTorch and wonder why it behaves the way it "
             "does. Every lesson page and the trainer page were executed when this book was "
             "built, and every printed check was compared with its expected value then: a lesson "
             "whose check disagreed would have stopped the build.")
    path_lines = ["## The path, 01 → 09", ""]
    chapter = None
    for lesson in lessons:
        number = lesson.name[:2]
        if number != chapter:
            chapter = number
            path_lines += ["", f"### {number} · {chapter_name(lesson)}", ""]
        page = pages[str(lesson)]
        path_lines.append(f"- [{html.escape(page.title)}]({page.file})")
    rest = ["## Beyond the lessons", ""]
    if trainer:
        rest.append(f"- [The Tensor Feature Trainer]({pages['trainer'].file}): "
                    "its reports and plots")
    rest.append(f"- [The benchmark]({pages['bench'].file}): the latest `make bench` table")
    start = quick_start(readme, index.clone).removeprefix("**Quick start.**").strip()
    notebook = markdown_notebook(intro, f"## Quick start\n\n{start}", "\n".join(path_lines),
                                 "\n".join(rest))
    write_page(notebook, index, folder)


def plan_pages(lessons: list[Path], trainer: bool, clone: str = "..") -> dict[str, Page]:
    """Every page in reading order (the lessons, keyed by their path; the trainer; the bench),
    each linked to the one before and after it."""
    # (key, file, title, what the links to it say: a lesson's short name, as make run's summary)
    entries = [(str(p), f"{p.stem}.html", lesson_title(p), short_name(p.name)) for p in lessons]
    if trainer:
        entries.append(("trainer", "trainer.html", "The Tensor Feature Trainer", "trainer"))
    entries.append(("bench", "bench.html", "The benchmark", "benchmark"))
    pages = {}
    for i, (key, file, title, _) in enumerate(entries):
        before = Link(entries[i - 1][1], entries[i - 1][3]) if i > 0 else None
        after = Link(entries[i + 1][1], entries[i + 1][3]) if i + 1 < len(entries) else None
        pages[key] = Page(file, title, before, after, clone)
    return pages


def _build_one(key: str, page: Page, folder: Path) -> tuple[str, str, float]:
    """One page, in a worker: (key, its summary line, seconds)."""
    started = time.perf_counter()
    if key == "trainer":
        line = build_trainer_page(page, folder)
    elif key == "bench":
        line = build_bench_page(page, folder)
    else:
        line = build_lesson_page(Path(key), page, folder)
    return key, line, time.perf_counter() - started


# -- the command line --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="python -m tensor_features.lab.book", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lessons", nargs="*", type=Path, metavar="LESSON.py",
                        help="the lesson files to put in the book, in this order "
                        "(default: every lesson, in teaching order)")
    parser.add_argument("--out", type=Path, default=Path("book"),
                        help="the folder the book is written to; replaced whole when the build "
                        "succeeds, left as it was when it fails (default: book)")
    parser.add_argument("--jobs", type=int_in_range(1, 64), default=min(2, os.cpu_count() or 1),
                        help="pages made at once, each in its own kernel (default: %(default)s)")
    parser.add_argument("--no-trainer", action="store_true", help="leave out the trainer page")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for lesson in args.lessons:
        if not lesson.is_file() or lesson.suffix != ".py":
            parser.error(f"{lesson}: no such lesson file (a .py file)")
    lessons = [p.resolve() for p in args.lessons] or lesson_paths()
    out = args.out.resolve()
    if out.exists() and not out.is_dir():
        parser.error(f"--out {args.out}: is a file, not a folder")
    if out == ROOT or out in ROOT.parents:
        parser.error(f"--out {args.out}: would replace the clone itself")
    problem = cannot_write_into(out.parent)
    if problem:
        parser.error(f"--out {args.out}: cannot write into {out.parent} ({problem})")
    for name in ("nbclient", "nbconvert", "jupytext", "ipykernel"):
        try:
            __import__(name)
        except ImportError:
            parser.exit(2, f"{parser.prog}: error: {name} is missing: make book installs the test "
                        "tools (requirements-dev.txt)\n")

    trainer = not args.no_trainer
    pages = plan_pages(lessons, trainer, Path(os.path.relpath(ROOT, out)).as_posix())
    # The slow pages first (the trainer runs three times; 09 starts two processes), so that the
    # workers end together.
    order = sorted(pages, key=lambda key: (key != "trainer", not Path(key).name.startswith("09")))
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}-building-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    building.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the book is an ordinary folder
    started = time.perf_counter()
    try:
        build_index(lessons, pages, building, trainer)
        _build_all(order, pages, building, args.jobs)
        _replace(out, building)
    except PageFailed as failed:
        print(f"{parser.prog}: {failed}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(building, ignore_errors=True)
    print(f"book: {len(pages) + 1} pages in {out} ({time.perf_counter() - started:.0f} s); "
          f"open {out / 'index.html'}")
    return 0


def _build_all(order: list[str], pages: dict[str, Page], folder: Path, jobs: int) -> None:
    """Make the pages, jobs at a time; at the first failure, start no more and raise it."""
    if jobs == 1:
        for key in order:
            _report(*_build_one(key, pages[key], folder))
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        pending = {pool.submit(_build_one, key, pages[key], folder) for key in order}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise future.exception()
                _report(*future.result())


def _report(key: str, line: str, seconds: float) -> None:
    name = short_name(Path(key).name) if key.endswith(".py") else key
    print(f"  {name:<32} {line:<48} {seconds:5.1f} s", flush=True)


def _replace(out: Path, built: Path) -> None:
    """built takes out's name: the old out, if any, is moved aside first, then removed."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(built, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    from tensor_features.cli import run_main

    sys.exit(run_main(main))
