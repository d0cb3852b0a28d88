"""Space files are read safely: an alias bomb, a file too large or an alias into itself is one
line at once; a byte order mark is dropped; anchors that repeat a few values still work."""

import time

import pytest

from study.errors import UsageError
from study.sweep import yaml_file
from study.sweep.space_file import load_space

# Nine levels of nine aliases: 9**9 (387 million) strings from a few hundred bytes.
LEVELS = "abcdefghi"
BOMB = (
    "["
    + ", ".join(
        f"&{name} [" + ", ".join([f"*{LEVELS[i - 1]}"] * 9 if i else ["lol"] * 9) + "]" for i, name in enumerate(LEVELS)
    )
    + "]"
)


@pytest.mark.parametrize(
    "text",
    [
        f"description: {BOMB}\npreset: test\n",  # where a string belongs: its error would print it all
        f"description: d\npreset: test\nseeds: {BOMB}\n",  # where a list of integers belongs
        "description: d\npreset: test\nvary: &loop {max_grad_norm: {grid: [1, 2]}, again: *loop}\n",
    ],
    ids=["description", "seeds", "alias into itself"],
)
def test_an_alias_bomb_is_refused_in_one_line_at_once(text, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    started = time.monotonic()
    with pytest.raises(UsageError, match=r"bomb.yaml: line 3|bomb.yaml: line 1") as error:
        load_space(str(path))
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert "\n" not in message and len(message) < 300 and "refused" in message, message


def test_a_file_over_the_size_bound_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    monkeypatch.setattr(yaml_file, "MAX_BYTES", 1000)
    path = tmp_path / "large.yaml"
    path.write_text("description: d\npreset: test\n# " + "x" * 2000 + "\n")
    with pytest.raises(UsageError, match=r"large.yaml: 2,031 bytes, allowed: a space file of at most 1,000 bytes"):
        load_space(str(path))


def test_anchors_that_repeat_a_few_values_still_load(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "description: d\npreset: test\nvary:\n"
        "  max_grad_norm: {grid: &thresholds [1, 5]}\n"
        "  clip_percentile: {grid: *thresholds}\n"
    )
    space = load_space(str(path))
    assert space.vary["max_grad_norm"] == space.vary["clip_percentile"] == {"grid": [1.0, 5.0]}


def test_a_byte_order_mark_is_dropped_from_the_text_and_the_keys(tmp_path):
    path = tmp_path / "bom.yaml"
    text = "description: with a BOM\npreset: test\n"
    path.write_bytes("\ufeff".encode() + text.encode())
    space = load_space(str(path))
    assert space.description == "with a BOM" and space.text == text


def test_a_long_wrong_value_is_cut_in_its_one_line_error(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text("description: [" + ", ".join(["word"] * 5000) + "]\npreset: test\n")
    with pytest.raises(UsageError, match=r"long.yaml: description: \['word', .*\.\.\. is not valid") as error:
        load_space(str(path))
    assert len(str(error.value)) < 300
