"""Atomic outputs: complete files or none, and README marker rewriting."""

import pytest

from romer.io import replace_between_markers, write_bytes_atomic


def test_replace_between_markers_keeps_the_rest(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("top\n<!-- a -->\nold\n<!-- b -->\nbottom\n")
    replace_between_markers(path, "<!-- a -->", "<!-- b -->", "new\nlines")
    assert path.read_text() == "top\n<!-- a -->\nnew\nlines\n<!-- b -->\nbottom\n"


def test_missing_markers_are_an_error_and_leave_the_file(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("no markers\n")
    with pytest.raises(ValueError, match="expected exactly one"):
        replace_between_markers(path, "<!-- a -->", "<!-- b -->", "x")
    assert path.read_text() == "no markers\n"


def test_a_failed_write_leaves_no_file_behind(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")
    with pytest.raises(TypeError):
        write_bytes_atomic(target, "a str is not bytes: the write fails after the temporary file exists")
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"] and target.read_bytes() == b"previous"
