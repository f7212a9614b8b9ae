"""03 storage: offsets and strides computed by hand, views vs copies, the version counter."""

import pytest
import torch

from conftest import ROOT, assert_caught, load_lesson, run_script, usage_error

lesson = load_lesson("03_tensor_attributes_and_methods_storage.py")


def test_storage_anatomy(lab):
    base = lesson.storage_anatomy(lab)["base"]
    assert base.untyped_storage().nbytes() == 3 * 4 * base.element_size()


def test_views_share_and_have_hand_computed_strides(lab):
    seen = lesson.views(lab)
    rows, cols = 3, 4
    assert seen["corner"].storage_offset() == 1 * cols + 1
    assert seen["transposed"].stride() == (1, cols)
    assert seen["expanded"].stride() == (1, 0)


def test_copies_and_the_impossible_view(lab):
    seen = lesson.copies(lab)
    assert_caught(seen["error"], RuntimeError, "view size is not compatible with input tensor's size and stride")
    # Oracle: the transpose of [[0..3], [4..7], [8..11]] read row by row, written out by hand.
    assert seen["flat"].cpu().tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]


def test_write_through_view(lab):
    base = lesson.write_through_view(lab)["base"]
    assert base[1, 1].item() == 100.0 and base._version == 1


def test_runs_as_a_script_without_storage_warnings():
    result = run_script("03_tensor_attributes_and_methods_storage.py", "--device", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TypedStorage" not in result.stderr


@pytest.mark.parametrize("name", sorted(path.name for path in ROOT.glob("[0-9][0-9]_*.py")))
def test_every_lesson_has_help_and_rejects_an_unavailable_device(name, capsys):
    # In process (each lesson's main(argv)); the subprocess test below covers the terminal.
    lesson = load_lesson(name)
    with pytest.raises(SystemExit) as exit_info:
        lesson.main(["--help"])
    assert exit_info.value.code == 0 and "--device" in capsys.readouterr().out
    for flag, message in ((["--device", "tpu"], "invalid choice"), (["--device", "cuda"], "no CUDA device")):
        if flag[1] == "cuda" and torch.cuda.is_available():
            continue
        assert message in usage_error(lesson.main, flag, capsys), name


def test_there_are_seven_lessons_and_help_works_from_the_terminal():
    assert len(list(ROOT.glob("[0-9][0-9]_*.py"))) == 7
    result = run_script("05_gradient_computation_vjp.py", "--help")
    assert result.returncode == 0 and "--size" in result.stdout and result.stderr == ""
