"""The paper's table: one row per method, Many / Medium / Few / All (test, chosen on val)."""
from __future__ import annotations

import csv
import json
import math

DISPLAY = {"joint": "Joint", "ncm": "NCM", "crt": "cRT", "tau_norm": "τ-normalized", "lws": "LWS",
           "learned_tau": "learned τ", "cosine": "cosine", "logit_adjust": "logit adj.",
           "balanced_softmax": "Balanced Softmax", "label_aware_smoothing": "label-aware smoothing", "wb": "WB",
           "disalign": "DisAlign"}
# the paper's methods in its order, then those published after it (stage2/later.py)
ORDER = ("joint", "ncm", "crt", "tau_norm", "lws", "learned_tau", "cosine", "logit_adjust", "balanced_softmax",
         "label_aware_smoothing", "wb", "disalign")
GROUPS = ("many", "medium", "few", "all")


def one_decimal(percent: float) -> str:
    """A percentage as every table shows it: rounded first to the two decimals table.csv keeps,
    then to one. The report's figure reads table.csv back, so both give 76.3 for 76.3500001,
    where rounding the raw value would print 76.4 in table.md beside 76.3 in table.png."""
    return f"{float(f'{percent:.2f}'):.1f}"


def table_rows(best: dict[str, dict]) -> list[dict]:
    """Rows in the paper's order: method, test many/medium/few/all, val columns, params."""
    rows = []
    for method in [m for m in ORDER if m in best] + sorted(set(best) - set(ORDER)):
        result = best[method]
        row = {"method": method}
        row.update({group: result.get(f"test_{group}", math.nan) for group in GROUPS})
        row.update({f"val_{group}": result.get(f"val_{group}", math.nan) for group in GROUPS})
        row["params"] = result["params"]
        rows.append(row)
    return rows


def write_table_csv(rows: list[dict], path: str) -> None:
    """table.csv: header method,many,medium,few,all (test, percent), then val columns and params."""
    columns = ["method", *GROUPS, *(f"val_{g}" for g in GROUPS), "params"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: (f"{value:.2f}" if isinstance(value, float) else value) for key, value in row.items()})


def read_table_csv(path: str) -> list[dict]:
    """Rows of a table.csv with numbers as floats."""
    with open(path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in row:
            if key not in ("method", "params"):
                row[key] = float(row[key])
    return rows


def markdown_table(rows: list[dict], split_note: str = "test, chosen on val") -> str:
    """The table as Markdown, numbers in percent."""
    lines = ["| method | Many | Medium | Few | All | val All | setting |", "|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        params = json.loads(row["params"]) if isinstance(row["params"], str) else row["params"]
        setting = ", ".join(f"{k}={v}" for k, v in params.items()) or "-"
        cells = " | ".join(one_decimal(row[key]) for key in (*GROUPS, "val_all"))
        lines.append(f"| {DISPLAY.get(row['method'], row['method'])} | {cells} | {setting} |")
    return "\n".join(lines) + f"\n\nTop-1 accuracy (%), {split_note}.\n"
