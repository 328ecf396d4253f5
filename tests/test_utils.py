"""The shared helpers: one CSV writer, one markdown table, one integer-list parser, one flag and option check."""

from __future__ import annotations

import argparse
import csv
import io

import pytest

from kvmonai.utils import as_flag, check_option, csv_text, int_list, markdown_table


def test_csv_text_quotes_and_reads_back():
    rows = [{"name": "a,b", "note": 'say "hi"', "n": 1}, {"name": "c", "n": None}]
    text = csv_text(rows)
    assert text.splitlines()[0] == "name,note,n"
    back = list(csv.DictReader(io.StringIO(text)))
    assert back == [{"name": "a,b", "note": 'say "hi"', "n": "1"}, {"name": "c", "note": "", "n": ""}]
    assert csv_text([]) == ""
    with pytest.raises(ValueError, match=r"row 0 has columns \['x'\]"):
        csv_text(iter([{"x": 1}]), fields=["y"])


def test_markdown_table_aligns_and_escapes():
    table = markdown_table(["a", "b"], [["x|y", 2]], ["left", "right"])
    assert table == "| a | b |\n|---|---:|\n| x\\|y | 2 |"
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="unknown alignment"):
        markdown_table(["a"], [], ["middle"])


def test_int_list_names_the_option():
    parse = int_list("--folds", minimum=0)
    assert parse("0,1,4") == [0, 1, 4]
    with pytest.raises(argparse.ArgumentTypeError, match="--folds, such as 0,1,2, got '0,x'"):
        parse("0,x")
    with pytest.raises(argparse.ArgumentTypeError, match=">= 0 for --folds"):
        parse("-1")


def test_flags_and_options():
    assert as_flag("fuse", "false") is False and as_flag("fuse", "On") is True and as_flag("fuse", True) is True
    with pytest.raises(ValueError, match="fuse must be true or false"):
        as_flag("fuse", "maybe")
    assert check_option("runtime", "torch", ("torch", "openvino")) == "torch"
    with pytest.raises(ValueError, match=r"runtime must be one of \('torch',\), got 'x'\. Pick one\."):
        check_option("runtime", "x", ("torch",), "Pick one.")


def test_atomic_output_keeps_compound_suffixes_and_cleans_up(tmp_path):
    from kvmonai.portable.files import TEMP_GLOB
    from kvmonai.utils import atomic_output

    with atomic_output(tmp_path / "label.nii.gz") as tmp:
        assert tmp.name.startswith(".label.") and tmp.name.endswith(".tmp.nii.gz")  # writers read the format from it
        assert list(tmp_path.glob(TEMP_GLOB)) == [tmp]
        tmp.write_bytes(b"whole")
    assert (tmp_path / "label.nii.gz").read_bytes() == b"whole" and not list(tmp_path.glob(TEMP_GLOB))
    with pytest.raises(KeyboardInterrupt), atomic_output(tmp_path / "label.nii.gz") as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert (tmp_path / "label.nii.gz").read_bytes() == b"whole" and not list(tmp_path.glob(TEMP_GLOB))


def test_short_list_shows_the_first_items_and_counts_the_rest():
    from kvmonai.utils import short_list

    assert short_list([]) == "none" and short_list([], empty="") == ""
    assert short_list(["a", "b"]) == "a, b"
    assert short_list(range(7), 3) == "0, 1, 2 (+4 more)"
    assert short_list(iter(["x", "y", "z"]), 2, sep="; ") == "x; y (+1 more)"
