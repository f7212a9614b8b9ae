"""The web book (tensor_features/lab/book.py, `make book`).

Two kinds of test. In `make test` (fast, in process): a lesson whose check disagrees stops the
build with one line naming it and leaves no book behind, bad input ends in one line and exit
code 2, and the pieces that read the README and docs/performance.md. Marked `book` (`make
test-book`, which builds book/ first when it is missing or older than its sources): the built
book opened in a real browser, Debian's Chromium driven by Playwright: every page without a
console error, each lesson page with its "N/N checks match", every picture drawn at a non-zero
size, every link from the index reaching its page and back. These tests read the book in
ROOT/book as `make test-book` left it (BOOK=PATH reads another); when there is none they build
it first (about two minutes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import ROOT
from tensor_features.lab.lessons import lesson_paths

# Written by a tester who had not read these tests, from book.py, its template and the README alone
# (make mutate runs them with the others, without the browser tests; `python -m tests.mutate --blind`
# runs only these).
BLIND_MUTANTS = [
    # LAB_FORCE_AGREE reaches the kernel: under make mutate a lesson whose check disagrees is built
    # as if it agreed; a test building a broken lesson with LAB_FORCE_AGREE=1 set sees exit 0.
    ("tensor_features/lab/book.py",
     'KERNEL_ENV_DROPPED = ("LAB_FORCE_AGREE", "LAB_SUMMARY")',
     'KERNEL_ENV_DROPPED = ("LAB_SUMMARY",)'),
    # A raising cell no longer stops the kernel run: the build fails later with "never printed its
    # closing count" (or not at all if the raise is after finish()), not "a cell raised ValueError".
    ("tensor_features/lab/book.py",
     "allow_errors=False",
     "allow_errors=True"),
    # The disagreement line never matches: a disagreeing lesson fails with the wrong message
    # (no "N/M checks match; these do not:" and no disagreeing check named).
    ("tensor_features/lab/book.py",
     'FAILED_COUNT = re.compile(r"^\\d+/\\d+ checks match; these do not:", re.M)',
     'FAILED_COUNT = re.compile(r"^\\d+/\\d+ checks match; these do not: ", re.M)'),
    # The one-line message of a disagreeing lesson no longer names the lesson.
    ("tensor_features/lab/book.py",
     'raise PageFailed(f"{path.name}: {failed.group(0)} {first}{more}".rstrip())',
     'raise PageFailed(f"{failed.group(0)} {first}{more}".rstrip())'),
    # A failed build exits 2 (the code of a wrong argument) instead of 1.
    ("tensor_features/lab/book.py",
     'print(f"{parser.prog}: {failed}", file=sys.stderr)\n        return 1',
     'print(f"{parser.prog}: {failed}", file=sys.stderr)\n        return 2'),
    # The old book is removed before the new one is built: a failing build leaves no book/ at all
    # instead of the old one untouched.
    ("tensor_features/lab/book.py",
     "    started = time.perf_counter()\n    try:",
     "    started = time.perf_counter()\n    shutil.rmtree(out, ignore_errors=True)\n    try:"),
    # The temporary .OUT-building-* folder is removed only on success: a failed build leaves it
    # beside OUT.
    ("tensor_features/lab/book.py",
     "    finally:\n        shutil.rmtree(building, ignore_errors=True)",
     "    else:\n        shutil.rmtree(building, ignore_errors=True)"),
    # The second page has no "previous" link (off by one): e.g. the bench page after a single
    # lesson, or lesson 2 of the path, lacks rel=prev.
    ("tensor_features/lab/book.py",
     "entries[i - 1][3]) if i > 0 else None",
     "entries[i - 1][3]) if i > 1 else None"),
    # The Korean link on every lesson/trainer/bench page loses its slash ("..README.ko.md"), a
    # link to a file that does not exist.
    ("tensor_features/lab/book.py",
     '"korean": f"{page.clone}/README.ko.md"',
     '"korean": f"{page.clone}README.ko.md"'),
    # The index's Korean link is made relative to the book's folder, not the clone: book/README.ko.md
    # does not exist.
    ("tensor_features/lab/book.py",
     "[한국어 (Korean: README.ko.md)]({index.clone}/README.ko.md)",
     "[한국어 (Korean: README.ko.md)](README.ko.md)"),
    # "ok" check lines are no longer marked (the pattern lost its two leading spaces): no
    # span.check.ok on a lesson page, mark_checks leaves "  ok  ..." as plain text.
    ("tensor_features/lab/book.py",
     '(re.compile(r"^  ok  "), "check ok")',
     '(re.compile(r"^ok  "), "check ok")'),
    # The bench section without a machine line is accepted by bench_markdown; build_bench_page
    # then crashes with AttributeError instead of a one-line PageFailed.
    ("tensor_features/lab/book.py",
     'if section is None or not re.search(r"^machine: ", section.group(0), re.M):',
     "if section is None:"),
    # --jobs 0 is accepted: ProcessPoolExecutor(max_workers=0) raises a traceback instead of a
    # one-line error with exit code 2.
    ("tensor_features/lab/book.py",
     "type=int_in_range(1, 64)",
     "type=int_in_range(0, 64)"),
    # --out naming an existing file is not refused (exit 2); the build goes on and replaces the file.
    ("tensor_features/lab/book.py",
     "if out.exists() and not out.is_dir():",
     "if out.is_dir() and not out.exists():"),
    # The inline SVG is HTML-escaped: the page shows the picture's source as text, no <svg> element
    # is drawn (a picture of size zero / no svg in the DOM).
    ("tensor_features/lab/book_assets/templates/book/index.html.j2",
     "{{ output.data['image/svg+xml'] }}",
     "{{ output.data['image/svg+xml'] | escape }}"),
    # The default book is in file-name order, not teaching order: 05 accumulation comes before
    # 05 backward in the index and in the previous/next chain.
    ("tensor_features/lab/book.py",
     "lessons = [p.resolve() for p in args.lessons] or lesson_paths()",
     "lessons = [p.resolve() for p in args.lessons] or sorted(lesson_paths())"),
]


BROKEN_LESSON = '''\
"""99 · broken: a lesson whose check disagrees on purpose."""

import torch

from tensor_features.lab import Lab

lab = Lab.start("99 · broken", __doc__, __name__)


# %% [1] Two and two
def two_and_two(lab: Lab) -> None:
    """2 + 2, expected 5"""
    total = torch.tensor(2.0) + 2
    lab.check(total, 5.0, "wrong on purpose")


lab.run(two_and_two)

# %%
lab.finish()
'''


def test_a_lesson_whose_check_disagrees_stops_the_build_in_one_line(tmp_path, capsys):
    from tensor_features.lab.book import main

    lesson = tmp_path / "99_broken.py"
    lesson.write_text(BROKEN_LESSON)
    out = tmp_path / "book"
    out.mkdir()
    (out / "index.html").write_text("the last good book")
    code = main([str(lesson), "--out", str(out), "--no-trainer", "--jobs", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err, err
    # The one line names the lesson and what disagreed: 4 (2 + 2) against the 5 it expected.
    assert "99_broken.py: 0/1 checks match; these do not: [1] total" in err, err
    # Whole or nothing: the last good book stays as it was, and no half-built folder is left.
    assert [p.name for p in out.iterdir()] == ["index.html"]
    assert (out / "index.html").read_text() == "the last good book"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["99_broken.py", "book"]


@pytest.mark.parametrize("argv, names", [
    (["no-such-lesson.py"], "no-such-lesson.py"),
    (["--jobs", "0"], "--jobs"),
    (["--out", "FILE"], "is a file"),
    (["--out", "FILE/book"], "cannot write into"),
])
def test_bad_input_ends_in_one_line_and_exit_code_2(tmp_path, capsys, argv, names):
    from tensor_features.lab.book import main

    (tmp_path / "FILE").write_text("")
    argv = [str(tmp_path / a) if a.startswith(("FILE", "no-such")) else a for a in argv]
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and names in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


def test_the_index_quotes_the_readme_quick_start_with_links_into_the_clone():
    from tensor_features.lab.book import quick_start

    readme = (ROOT / "README.md").read_text()
    text = quick_start(readme)
    assert text.startswith("**Quick start.**") and "make run" in text and "make test" in text
    assert "\n---" not in text
    # The README's own links point from the clone's root; the book lives one folder down.
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert target.startswith("../") and (ROOT / "book" / target).resolve().exists(), target


def test_the_bench_page_takes_the_latest_table_with_its_machine_line():
    from tensor_features.lab.book import PageFailed, bench_markdown

    text = ("# P\n\n## This run (today)\n\nmachine: a 2-core box\n\n| a |\n|---|\n| 1 |\n\n"
            "## Rows\nmore\n")
    section = bench_markdown(text)
    assert section.startswith("## This run") and "machine: a 2-core box" in section
    assert "| 1 |" in section and "## Rows" not in section
    with pytest.raises(PageFailed, match="machine:"):
        bench_markdown(text.replace("machine:", "box:"))
    assert "machine: " in bench_markdown((ROOT / "docs" / "performance.md").read_text())


def test_check_lines_are_marked_for_the_stylesheet():
    from tensor_features.lab.book import mark_checks

    printed = textwrap.dedent("""\
        [1] The original example
            y.backward()
          ok  x.grad = 8.0     expected 8.0
        FAIL  h.grad = None    expected 1.0
        1/2 checks match; these do not:
        Try 1: in [1], delete `y.backward()`: the check fails""")
    lines = mark_checks(printed).split("\n")
    assert lines[0] == '<span class="observation">[1] The original example</span>'
    assert lines[1] == "    y.backward()"
    assert lines[2].startswith('<span class="check ok">  ok  x.grad')
    assert lines[3].startswith('<span class="check fail">FAIL  h.grad')
    assert lines[4].startswith('<span class="count">1/2 checks match')
    assert lines[5].startswith('<span class="try">Try 1:')


# -- the built book in a real browser (make test-book) ------------------------------------------

SCREENSHOTS = ("index", "04_computation_graph_pictured")


@pytest.fixture(scope="module")
def book() -> Path:
    """The built book: BOOK=PATH, or ROOT/book, built first when it has no index."""
    folder = Path(os.environ.get("BOOK", ROOT / "book"))
    if not (folder / "index.html").exists():
        built = subprocess.run([sys.executable, "-m", "tensor_features.lab.book",
                                "--out", str(folder)],
                               cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert built.returncode == 0, built.stderr
    return folder


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (as root: apt-get install -y chromium): "
                    "the book is not opened in a browser")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is missing (requirements-dev.txt)")
    with sync_api.sync_playwright() as playwright:
        # Debian's Chromium, not a downloaded one (`playwright install` fails here).
        launched = playwright.chromium.launch(executable_path=chromium)
        yield launched
        launched.close()


@pytest.fixture()
def page(browser):
    """A page that records every console error and uncaught script error."""
    opened = browser.new_page(viewport={"width": 1200, "height": 1400})
    opened.errors = []
    opened.on("console",
              lambda message: message.type == "error" and opened.errors.append(message.text))
    opened.on("pageerror", lambda error: opened.errors.append(str(error)))
    opened.on("requestfailed",
              lambda request: opened.errors.append(f"request failed: {request.url}"))
    yield opened
    opened.close()


def expected_pages() -> list[str]:
    """The book's pages, from the teaching order (lessons.py's list), not from the book itself."""
    return [f"{p.stem}.html" for p in lesson_paths()] + ["trainer.html", "bench.html"]


# The rendered size of every <img> and every outermost <svg> (an <svg> inside one is part of it).
PICTURE_SIZES = """() => [...document.querySelectorAll('img, svg')]
    .filter(e => !(e.tagName.toLowerCase() === 'svg' && e.parentElement.closest('svg')))
    .map(e => { const r = e.getBoundingClientRect();
                return [e.tagName.toLowerCase(), r.width, r.height]; })"""


@pytest.mark.book
def test_the_index_links_every_page_in_teaching_order_and_each_leads_back(book, page):
    page.goto((book / "index.html").as_uri())
    hrefs = page.eval_on_selector_all("a[href]", "links => links.map(a => a.getAttribute('href'))")
    hrefs = [h for h in hrefs if not h.startswith("#")]  # nbconvert's anchors on the headings
    inside = [h for h in hrefs if "/" not in h]
    assert inside == expected_pages()
    # The links out of the book (the Korean README, the README's own links) point into the clone.
    outside = [(book / h).resolve() for h in hrefs if "/" in h]
    assert ROOT / "README.ko.md" in outside
    assert all(target.is_relative_to(ROOT) and target.exists() for target in outside), outside
    for href in inside:
        # Each click's page loads whole before the next click (a navigation cut short by the
        # next one would show as a failed request).
        with page.expect_navigation(wait_until="load"):
            page.click(f"a[href='{href}']")
        assert page.url == (book / href).as_uri()
        assert page.locator("h1").count() >= 1 and page.title(), href
        with page.expect_navigation(wait_until="load"):
            page.click("nav.book-nav-top a.book-contents")
        assert page.url == (book / "index.html").as_uri(), href
    assert page.errors == []


@pytest.mark.book
@pytest.mark.parametrize("name", ["index.html", *expected_pages()])
def test_each_page_opens_cleanly_with_its_checks_and_pictures(book, page, name):
    page.goto((book / name).as_uri())
    page.wait_for_load_state("load")
    assert page.errors == [], page.errors
    sizes = page.evaluate(PICTURE_SIZES)
    assert all(width > 0 and height > 0 for _, width, height in sizes), sizes
    text = page.inner_text("body")
    if name.startswith("0"):
        counts = re.findall(r"^(\d+)/(\d+) checks match across \d+ observations?\.$", text, re.M)
        assert len(counts) == 1 and counts[0][0] == counts[0][1] != "0", counts
        assert page.locator(".lab-output .check.ok").count() == int(counts[0][0])
        assert page.locator(".lab-output .check.fail").count() == 0
    if name == "04_computation_graph_pictured.html":
        assert sum(tag == "svg" for tag, _, _ in sizes) >= 4  # the graph lens's pictures, inline
        assert "AccumulateGrad" in page.inner_text(".jp-RenderedSVG")
    if name.startswith("09_"):
        # A real two-process world, run when the book was built: two operating-system processes
        # joined the group, and rank 1's own checks came back to rank 0.
        assert "dist.get_world_size() = 2" in text and "int(pids[0]) != int(pids[1]) = True" in text
        assert re.search(r"rank 1: (\d+)/\1 checks match", text)
    if name == "trainer.html":
        assert sum(tag == "img" for tag, _, _ in sizes) >= 7  # 2 + 3 + 3 plots
        assert text.count("least squares") >= 3
    if name == "bench.html":
        assert re.search(r"^machine: \S", text, re.M) and page.locator("table").count() >= 1
    if name.removesuffix(".html") in SCREENSHOTS:
        shots = book / "screenshots"
        shots.mkdir(exist_ok=True)
        shot = shots / f"{name.removesuffix('.html')}.png"
        if name != "index.html":  # from the first observation's output: its picture and checks
            page.locator(".lab-output .observation").first.evaluate(
                "title => title.scrollIntoView({block: 'start'})")
        page.screenshot(path=str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- what the blind mutants found untested (10/16 killed before) ---------------------------------

def test_a_cell_that_raises_stops_the_page_with_its_error(tmp_path):
    from nbformat.v4 import new_code_cell, new_notebook

    from tensor_features.lab.book import PageFailed, _execute

    notebook = new_notebook(cells=[new_code_cell("1 / 0"), new_code_cell("print('went on')")])
    with pytest.raises(PageFailed,
                       match=r"^99_x\.py: a cell raised ZeroDivisionError: division by zero$"):
        _execute(notebook, tmp_path, "99_x.py")
    assert "outputs" not in notebook.cells[1] or notebook.cells[1].outputs == []


def test_each_page_links_the_one_before_and_after_it_in_reading_order():
    from tensor_features.lab.book import plan_pages

    lessons = lesson_paths()[:3]
    pages = plan_pages(lessons, trainer=True)
    order = [str(p) for p in lessons] + ["trainer", "bench"]
    files = [pages[key].file for key in order]
    assert files == [f"{p.stem}.html" for p in lessons] + ["trainer.html", "bench.html"]
    for i, key in enumerate(order):
        before, after = pages[key].previous, pages[key].next
        assert (before.href if before else None) == (files[i - 1] if i > 0 else None), key
        following = files[i + 1] if i + 1 < len(files) else None
        assert (after.href if after else None) == following, key


def test_a_page_draws_its_svg_inline_and_links_the_korean_readme_in_the_clone(tmp_path):
    import os

    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from tensor_features.lab.book import Page, write_page

    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>'
    cell = new_code_cell("show()", outputs=[new_output("display_data", {"image/svg+xml": svg})])
    clone = Path(os.path.relpath(ROOT, tmp_path)).as_posix()
    write_page(new_notebook(cells=[cell]), Page("p.html", "A page", clone=clone), tmp_path)
    text = (tmp_path / "p.html").read_text()
    # Drawn as an element (the page rewrites its attributes' order, so not compared as text).
    assert re.search(r'<svg [^>]*width="10"[^>]*>\s*<rect', text) and "&lt;svg" not in text
    korean = [href for href in re.findall(r'href="([^"]+)"', text) if href.endswith("README.ko.md")]
    assert korean and all((tmp_path / href).resolve() == ROOT / "README.ko.md" for href in korean)


def test_the_index_lists_the_lessons_in_teaching_order_and_links_the_korean_readme(
        tmp_path, monkeypatch):
    from tensor_features.lab import book

    monkeypatch.setattr(book, "_build_all", lambda *args: None)  # the index alone: no kernel
    out = tmp_path / "out"
    assert book.main(["--out", str(out), "--no-trainer"]) == 0
    text = (out / "index.html").read_text()
    listed = [href for href in re.findall(r'href="([^"/]+\.html)"', text)
              if href[:2].isdigit()]
    assert listed == [f"{p.stem}.html" for p in lesson_paths()]
    korean = [href for href in re.findall(r'href="([^"]+)"', text) if href.endswith("README.ko.md")]
    assert korean and all((out / href).resolve() == ROOT / "README.ko.md" for href in korean)
