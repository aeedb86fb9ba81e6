"""CSV cells are text as written: number-like answers stay answers, labels may mix true and 1."""

from __future__ import annotations

import pytest

from tether.data.records import load_preferences, read_rows
from tether.errors import DataError
from tether.shapes.unpaired import load_unpaired


def test_number_like_answers_stay_text(tmp_path):
    p = tmp_path / "pairs.csv"
    p.write_text('prompt,chosen,rejected\n2+2?,4.,5\n"a, b?","1,000",007\n')
    records, _ = load_preferences(str(p))
    assert [(r.prompt, r.chosen, r.rejected) for r in records] == [
        ("2+2?", "4.", "5"), ("a, b?", "1,000", "007")]
    assert [r.source for r in records] == [f"{p}:2", f"{p}:3"]


def test_a_label_column_may_mix_true_and_1(tmp_path):
    p = tmp_path / "kto.csv"
    p.write_text("prompt,completion,label\nq,a,true\nq,b,0\nr,c,1\nr,d,FALSE\n")
    records, _ = load_unpaired(str(p))
    assert [r.label for r in records] == [True, False, True, False]


def test_rows_are_named_by_the_line_they_start_on(tmp_path):
    p = tmp_path / "pairs.csv"
    p.write_text('\ufeffprompt,chosen,rejected\n"multi\nline",a,b\nq,,b\n')
    rows = read_rows(str(p))
    assert rows[0].data == {"prompt": "multi\nline", "chosen": "a", "rejected": "b"}
    assert rows[1].source == f"{p}:4"  # the quoted cell spans lines 2-3
    with pytest.raises(DataError, match=r"pairs\.csv:4: .*chosen.*empty \(null\)"):
        load_preferences(str(p))


def test_a_row_with_too_many_cells_names_its_line(tmp_path):
    p = tmp_path / "pairs.csv"
    p.write_text("prompt,chosen,rejected\nq,a,b\nq,a,b,c\n")
    with pytest.raises(DataError, match=r"pairs\.csv:3: 4 cells, the header has 3"):
        read_rows(str(p))
