"""report.html: one self-contained page (images inlined) that a browser opens without a server."""
from __future__ import annotations

import base64
import csv
import html
import json
import os
import time

import numpy as np

from lt_dist.errors import UserInputError
from lt_dist.outputs import check_output_file
from lt_dist.report.figures import plot_accuracy_vs_size, plot_table, plot_training_curves
from lt_dist.report.models import models_html
from lt_dist.report.run import find_sources, provenance_rows, read_log
from lt_dist.report.tables import DISPLAY, read_table_csv

FIGURES = (("training_curves.png", "Stage 1: training loss and val accuracy per epoch, learning rate per step"),
           ("class_counts.png", "Training class counts (sorted, log scale)"),
           ("tau_curve.png", "Accuracy against τ (val)"),
           ("logit_adjust_tau_curve.png", "Post-hoc logit adjustment: accuracy against τ (val)"),
           ("weight_norms.png", "Classifier weight norms, classes sorted by training count"),
           ("accuracy_vs_size.png", "Per-class test accuracy against class size"))
STYLE = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.35em .8em;text-align:right}
th:first-child,td:first-child{text-align:left}figure{margin:1.5em 0}img{max-width:100%}
.note{color:#555;font-size:.9em}table.facts th{text-align:left;font-weight:normal;color:#555}
table.facts td{text-align:left;word-break:break-all}"""


def _image(path: str) -> str:
    with open(path, "rb") as handle:
        return "data:image/png;base64," + base64.b64encode(handle.read()).decode("ascii")


def _read_per_class(results_dir: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[int, dict], list[str]]:
    """One read of per_class.csv: (per method, its (train counts, test accuracies) for the figure;
    per label, {name, group, count, accuracy by method} for the table; the methods in file order)."""
    path = os.path.join(results_dir, "per_class.csv")
    series: dict[str, tuple[list, list]] = {}
    classes: dict[int, dict] = {}
    methods: list[str] = []
    if not os.path.isfile(path):
        return {}, classes, methods
    with open(path, encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            counts, accuracy = series.setdefault(DISPLAY.get(row["method"], row["method"]), ([], []))
            counts.append(int(row["train_count"]))
            accuracy.append(float(row["test_accuracy"]))
            entry = classes.setdefault(int(row["label"]), {"name": row["class_name"], "group": row["group"],
                                                           "count": int(row["train_count"]), "accuracy": {}})
            entry["accuracy"][row["method"]] = row["test_accuracy"]
            if row["method"] not in methods:
                methods.append(row["method"])
    return {name: (np.array(c), np.array(a)) for name, (c, a) in series.items()}, classes, methods


def _table_html(rows: list[dict]) -> str:
    head = "<tr><th>method</th><th>Many</th><th>Medium</th><th>Few</th><th>All</th><th>val All</th><th>setting</th></tr>"
    body = []
    for row in rows:
        params = json.loads(row["params"]) if row.get("params") else {}
        setting = ", ".join(f"{k}={v}" for k, v in params.items()) or "–"
        cells = "".join(f"<td>{row[k]:.1f}</td>" for k in ("many", "medium", "few", "all", "val_all"))
        body.append(f"<tr><td>{html.escape(DISPLAY.get(row['method'], row['method']))}</td>{cells}"
                    f"<td>{html.escape(setting)}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _provenance_html(rows: list[tuple[str, str]]) -> str:
    """The "How this was made" section: one row per recorded fact ('' when nothing was recorded)."""
    if not rows:
        return ""
    body = "".join(f"<tr><th>{html.escape(name)}</th><td><code>{html.escape(value)}</code></td></tr>"
                   for name, value in rows)
    return f'<h2>How this was made</h2><table class="facts">{body}</table>'


def _per_class_html(classes: dict[int, dict], methods: list[str]) -> str:
    """Per-class test accuracy of each method, classes by name, most images first, in a folded table."""
    if not classes:
        return ""
    head = "".join(f"<th>{html.escape(DISPLAY.get(m, m))}</th>" for m in methods)
    body = "".join(f"<tr><td>{html.escape(c['name'])}</td><td>{html.escape(c['group'])}</td><td>{c['count']}</td>"
                   + "".join(f"<td>{html.escape(c['accuracy'].get(m, ''))}</td>" for m in methods) + "</tr>"
                   for _, c in sorted(classes.items(), key=lambda item: (-item[1]["count"], item[0])))
    return (f"<details><summary>Per-class test accuracy (%), {len(classes)} classes</summary><table>"
            f"<tr><th>class</th><th>group</th><th>train images</th>{head}</tr>{body}</table></details>")


def build_report(results_dir: str, out: str | None = None) -> str:
    """Render results_dir/report.html (and table.png, accuracy_vs_size.png); returns its path."""
    table_csv = os.path.join(results_dir, "table.csv")
    if not os.path.isfile(table_csv):
        raise UserInputError(f"{results_dir!r} has no table.csv: run tune/search_stage2.py first")
    path = out or os.path.join(results_dir, "report.html")
    _check_report_path(path, results_dir)
    rows, info, (per_class, classes, methods) = _read_results(results_dir)
    if per_class:
        plot_accuracy_vs_size(per_class, os.path.join(results_dir, "accuracy_vs_size.png"))
    index, run_dir = find_sources(info)
    epochs, lr_steps = read_log(run_dir) if run_dir else ([], [])
    if epochs:
        plot_training_curves(epochs, lr_steps, os.path.join(results_dir, "training_curves.png"))
    name = os.path.basename(os.path.normpath(results_dir))
    plot_table(rows, DISPLAY, os.path.join(results_dir, "table.png"), f"{name}: top-1 (%), test, chosen on val")
    figures = "".join(f'<figure><img alt="{html.escape(caption)}" src="{_image(os.path.join(results_dir, file))}">'
                      f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                      for file, caption in FIGURES if os.path.isfile(os.path.join(results_dir, file)))
    counts = info.get("train_counts")
    facts = (f"{len(counts)} classes, {sum(counts):,} training images, {max(counts)} to {min(counts)} per class; "
             if counts else "")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lt-dist report: {html.escape(name)}</title>
<style>{STYLE}</style></head><body>
<h1>lt-dist report: {html.escape(name)}</h1>
<p class="note">{html.escape(facts)}{info.get('trials', '?')} stage-2 trials, settings chosen on
{html.escape(str(info.get('select_on', 'val')))}; test evaluated once per chosen setting.
Many-shot: more than 100 training images, few-shot: fewer than 20.</p>
<h2>Many / Medium / Few / All (test top-1, %)</h2>
{_table_html(rows)}
{figures}
{_per_class_html(classes, methods)}
{models_html(results_dir)}
{_provenance_html(provenance_rows(info, index, run_dir))}
<p class="note">Generated {time.strftime('%Y-%m-%d %H:%M')} by <code>lt_dist report</code>.</p>
</body></html>
"""
    temp = f"{path}.tmp-{os.getpid()}"
    with open(temp, "w", encoding="utf-8") as handle:
        handle.write(page)
    os.replace(temp, path)
    return path


def _check_report_path(path: str, results_dir: str) -> None:
    """The page goes to a writable file that is new or an earlier report (never over other files)."""
    if not os.access(results_dir, os.W_OK | os.X_OK):
        raise UserInputError(f"results folder {results_dir!r} is not writable (the report's figures go there)")
    check_output_file(path, "--out")
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            head = handle.read(512)
        if not (head.startswith(b"<!DOCTYPE html>") and b"lt-dist report" in head):
            raise UserInputError(f"--out {path!r} exists and is not a report written by lt_dist report: "
                                 f"choose another file")


def _read_results(results_dir: str) -> tuple[list[dict], dict, tuple]:
    """(table rows, search.json, _read_per_class's triple) with every malformed file named in one line."""
    name = "table.csv"
    try:
        rows = read_table_csv(os.path.join(results_dir, name))
        for row in rows:
            json.loads(row["params"]) if row.get("params") else None
            [row[key] for key in ("method", "many", "medium", "few", "all", "val_all")]
        name = "search.json"
        info_path = os.path.join(results_dir, name)
        info = {}
        if os.path.isfile(info_path):
            with open(info_path, encoding="utf-8") as handle:
                info = json.load(handle)
            counts = info.get("train_counts")
            if counts is not None and not (isinstance(counts, list) and counts and
                                           all(isinstance(c, int) and c >= 0 for c in counts)):
                raise ValueError(f"train_counts must be a list of counts >= 0, got {str(counts)[:40]}")
        name = "per_class.csv"
        per_class = _read_per_class(results_dir)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserInputError(f"{os.path.join(results_dir, name)!r} is malformed "
                             f"({type(error).__name__}: {str(error)[:100]})") from None
    if not rows:
        raise UserInputError(f"{os.path.join(results_dir, 'table.csv')!r} has no rows")
    return rows, info, per_class
