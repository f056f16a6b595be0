"""Hostile and careless input (issue 25): each test reproduces one finding with small generated files and checks
that mobiforge is neither silently wrong, nor injectable, nor losing work."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobiforge.card import ModelCard
from mobiforge.config import DataConfig, ShipConfig
from mobiforge.data import discover, load_rgb
from mobiforge.errors import MobiforgeError
from tests.helpers import make_folder, make_split_folder


def test_three_processes_first_using_digits_at_once_all_get_the_whole_set(tmp_path: Path) -> None:
    """Item 1: concurrent first use left 1,171 of 1,797 files marked complete, and two tracebacks."""
    script = "from mobiforge.data import materialize_digits; print(materialize_digits())"
    env = {**os.environ, "MOBIFORGE_HOME": str(tmp_path)}
    runs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
    runs += [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], [err.decode()[-500:] for _, err in outputs]
    root = Path(outputs[0][0].decode().strip())
    files = [name for _, _, names in os.walk(root) for name in names if name.endswith(".png")]
    assert len(files) == 1797 and (root / ".complete").read_text() == "1797"
    assert sorted(path.name for path in tmp_path.joinpath("datasets").iterdir()) == ["digits", "digits.lock"]


def test_a_damaged_digits_copy_marked_complete_is_written_again(tmp_path: Path, monkeypatch) -> None:
    from mobiforge.data import materialize_digits

    root = tmp_path / "digits"
    (root / "train" / "0").mkdir(parents=True)
    (root / ".complete").touch()  # the marker of old versions, on a copy cut short
    assert materialize_digits(root) == root
    assert (
        sum(len(names) for _, _, names in os.walk(root / "train"))
        + sum(len(names) for _, _, names in os.walk(root / "val"))
        == 1797
    )


def test_a_link_loop_is_walked_once_and_a_file_in_two_classes_is_refused(tmp_path: Path) -> None:
    """Item 2: ``a/loop -> ..`` turned 12 files into 442 train / 50 val samples, val inside train."""
    data = make_folder(tmp_path / "d", classes=2, per_class=6)
    first = sorted(path.name for path in data.iterdir())[0]
    os.symlink("..", data / first / "loop")
    with pytest.raises(MobiforgeError, match=r"is the same file as .*through a link"):
        discover(DataConfig(data=str(data)))


def test_a_file_linked_into_both_splits_is_refused(tmp_path: Path) -> None:
    data = make_split_folder(tmp_path / "d", classes=2, train=4, val=2)
    image = next((data / "val").rglob("*.png"))
    os.symlink(image, data / "train" / image.parent.name / "linked.png")
    with pytest.raises(MobiforgeError, match=r"\((train|val) class0 and (val|train) class0, through a link\): remove"):
        discover(DataConfig(data=str(data)))


def test_the_same_file_linked_twice_into_one_class_counts_once(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "d", classes=2, per_class=6)
    folder = sorted(path for path in data.iterdir())[0]
    os.symlink(folder, folder / "again")  # a loop onto itself: no new files
    os.symlink(next(folder.glob("*.png")), folder / "copy.png")
    splits = discover(DataConfig(data=str(data), val_split=0.5))
    assert len(splits.train) + len(splits.val) == 12


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_16_bit_image_keeps_its_grey(tmp_path: Path, suffix: str) -> None:
    """Item 5: a mid-grey 16-bit PNG loaded as 255 everywhere."""
    path = tmp_path / f"grey{suffix}"
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(path)
    with Image.open(path) as opened:
        assert opened.mode in ("I;16", "I")
    pixels = np.asarray(load_rgb(str(path)))
    assert pixels.shape == (8, 8, 3) and np.all(pixels == 128)


@pytest.mark.parametrize(("value", "grey"), [(0.5, 128), (200.0, 200)], ids=["0-1 floats", "0-255 floats"])
def test_a_float_tiff_keeps_its_grey(tmp_path: Path, value: float, grey: int) -> None:
    """Issue 44 item 12: a 32-bit float TIFF decoded as black (convert() truncates 0.5 to 0)."""
    path = tmp_path / "grey.tiff"
    Image.fromarray(np.full((8, 8), value, dtype=np.float32)).save(path)
    with Image.open(path) as opened:
        assert opened.mode == "F"
    pixels = np.asarray(load_rgb(str(path)))
    assert pixels.shape == (8, 8, 3) and np.all(pixels == grey)


CLASS_NAMES = ['"><script>alert(2)<', "ok ${1+1}", "back\\slash \\(x)", "line\nbreak"]


def _card(classes: list[str]) -> ModelCard:
    return ModelCard.from_dict({
        "classes": classes,
        "preprocessing": {"crop": 224, "resize": 256, "mean": [0.5] * 3, "std": [0.5] * 3},
        "artifact": {"file": "model.pte", "format": "executorch"},
    })  # fmt: skip


def _string_literals(code: str, line_start: str) -> list[str]:
    """The string literals of the line that starts with ``line_start``, read as the target language would: a
    backslash escapes the next character, a bare quote ends the literal."""
    line = next(line for line in code.splitlines() if line.startswith(line_start))
    literals, current, inside, escaped = [], "", False, False
    for char in line:
        if inside and escaped:
            current, escaped = current + char, False
        elif inside and char == "\\":
            current, escaped = current + char, True
        elif char == '"':
            if inside:
                literals.append(current)
                current = ""
            inside = not inside
        elif inside:
            current += char
    return literals


def test_class_names_stay_text_in_the_kotlin_and_swift_snippets() -> None:
    """Item 7: a class folder named ``ok ${1+1}`` was Kotlin code, and a quote ended the string."""
    from mobiforge.ship.snippets import android_snippet, ios_snippet

    kotlin = _string_literals(android_snippet(_card(CLASS_NAMES)), "val CLASSES")
    swift = _string_literals(ios_snippet(_card(CLASS_NAMES)), "let classes")
    assert len(kotlin) == len(swift) == len(CLASS_NAMES)
    assert kotlin[1] == "ok \\${1+1}" and kotlin[0] == '\\"><script>alert(2)<'
    assert swift[2] == "back\\\\slash \\\\(x)"  # no \( interpolation left
    assert "\n" not in kotlin[3] + swift[3] and "$" not in "".join(kotlin).replace("\\$", "")


def test_report_markdown_escapes_html_outside_code() -> None:
    from mobiforge.ship.report import markdown_text

    line = "Data: .../<img src=x onerror=alert(1)> & co, `mobiforge ship --data '<x>'`"
    assert markdown_text(line) == "Data: .../&lt;img src=x onerror=alert(1)&gt; &amp; co, `mobiforge ship --data '<x>'`"


def test_the_command_line_is_shell_quoted_and_names_every_changed_setting(tmp_path: Path) -> None:
    from mobiforge.ship.report import ship_command

    config = ShipConfig(data="digits", out="runs/my run; rm -rf ~", seed=7, models=["mobilenet_v2"], max_drop=2.0)
    argv = shlex.split(ship_command(config))
    assert argv[:4] == ["mobiforge", "ship", "--data", "digits"]
    options = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert options["--out"] == "runs/my run; rm -rf ~" and options["--seed"] == "7"
    assert options["--models"] == "mobilenet_v2" and options["--max-drop"] == "2.0"


BAD_FLAGS = [
    (["train", "--clip-grad", "-1"], "--clip-grad must be > 0, got -1.0"),
    (["train", "--step-size", "0"], "--step-size must be >= 1, got 0"),
    (["train", "--label-smoothing", "2"], "--label-smoothing must be in [0, 1), got 2.0"),
    (["train", "--threads", "-2"], "--threads must be >= 1, got -2"),
    (["train", "--device", "tpu"], "--device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    (["train", "--ema", "2"], "--ema must be in (0, 1), got 2.0"),
    (["train", "-b", "0"], "--batch-size must be >= 1, got 0"),
    (["train", "-j", "-1"], "--workers must be >= 0, got -1"),
    (["train", "--width-mult", "0"], "--width-mult must be in (0, 8], got 0.0"),
    (["train", "--img-size", "100000"], "--img-size must be in [8, 2048], got 100000"),
    (["export", "ckpt.pt", "-f", "onnx", "--val-images", "0"], "--val-images must be >= 1, got 0"),
    (["ship", "--img-size", "0"], "--img-size must be in [8, 2048], got 0"),
    (["ship", "--time-budget", "1s"], "--time-budget must be >= 60, got 1.0"),
    (["train", "--precise-bn", "-1"], "--precise-bn must be >= 0, got -1"),
    (["models", "--img-size", "-1"], "--img-size must be in [8, 2048], got -1"),
    (["predict", "ckpt.pt", "x.jpg", "-k", "-3"], "--top-k must be >= 1, got -3"),
    (["predict", "ckpt.pt", "x.jpg", "-k", "0"], "--top-k must be >= 1, got 0"),
    (["profile", "mobilenet_v2", "--num-classes", "0"], "--num-classes must be >= 1, got 0"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS, ids=[" ".join(argv) for argv, _ in BAD_FLAGS])
def test_a_bad_flag_value_is_one_line_naming_the_flag(argv: list[str], message: str, capsys) -> None:
    """Items 6 and 12: a negative --clip-grad flipped every gradient silently; the others ended in tracebacks."""
    from mobiforge.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"mobiforge {argv[0]}: error: {message}"


def test_the_api_refuses_the_same_values(tmp_path: Path) -> None:
    from mobiforge.config import OptimConfig, TrainConfig

    with pytest.raises(MobiforgeError, match="--clip-grad must be > 0"):
        OptimConfig(clip_grad=-1.0)
    with pytest.raises(MobiforgeError, match="--epochs must be >= 1"):
        TrainConfig(epochs=0)


def test_a_backtick_in_a_name_leaves_no_raw_html_on_the_report_line() -> None:
    """Rendered by a CommonMark renderer (markdown-it, as GitHub's follows the same spec), no tag gets through."""
    from markdown_it import MarkdownIt

    from mobiforge.ship.report import code_span, markdown_text

    render = MarkdownIt("commonmark").render
    folder = "photos`<img src=x onerror=alert(1)>"
    for line in (
        f"Data: {folder}/train, command `mobiforge ship --data '<x>'`",
        f"Data: `{folder}` and `b` <b>",
        f"classes: {code_span(folder)}, `{folder}``<i>x</i>",
        "Data: `photos`` <img src=x onerror=alert(1)>",  # the old even/odd split left this tag raw
    ):
        assert "<img" not in render(markdown_text(line)) and "<i>" not in render(markdown_text(line)), line
    assert code_span("a`b") == "`` a`b ``" and code_span("ants") == "`ants`"
    assert "<code>a`b</code>" in render(code_span("a`b"))
