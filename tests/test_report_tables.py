"""table.md (written from the search's raw scores) and table.png (drawn from table.csv read back)
show the same one-decimal numbers."""
from __future__ import annotations

from lt_dist.report.tables import markdown_table, one_decimal, read_table_csv, write_table_csv


def test_the_markdown_table_rounds_as_the_csv_read_back_does(tmp_path):
    # 76.35000001 rounds to 76.4 directly but is 76.35 in table.csv, which float-rounds to 76.3
    raw = [{"method": "crt", "many": 76.35000001, "medium": 50.0, "few": 12.25000001, "all": 60.05,
            "val_many": 1.0, "val_medium": 2.0, "val_few": 3.0, "val_all": 70.15000001, "params": "{}"}]
    write_table_csv(raw, str(tmp_path / "table.csv"))
    read_back = read_table_csv(str(tmp_path / "table.csv"))
    assert markdown_table(raw) == markdown_table(read_back)
    cells = markdown_table(raw).splitlines()[2].split(" | ")
    assert cells[1] == f"{76.35:.1f}" and cells[3] == f"{12.25:.1f}"  # the csv's two decimals, then one
    assert [one_decimal(read_back[0][k]) for k in ("many", "few")] == [cells[1], cells[3]]
