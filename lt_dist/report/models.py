"""The report's "Model files" section: the stage-2 heads a search saved and how to export each."""
from __future__ import annotations

import html
import json
import os

from lt_dist.report.tables import DISPLAY
from lt_dist.stage2.saved import HEADS_DIR, saved_methods


def export_command(results_dir: str, method: str, ckpt: str | None) -> str:
    """The `lt_dist export` line that packages one saved head with its stage-1 backbone."""
    run = ckpt or "runs/NAME"
    return (f"lt_dist export --run {run} --results {results_dir} --method {method} "
            f"--out model/{method} --format onnx")


def models_html(results_dir: str) -> str:
    """An HTML section listing heads/<method>.safetensors with their export commands ('' when none)."""
    methods = saved_methods(results_dir)
    if not methods:
        return ""
    rows = []
    for method in methods:
        with open(os.path.join(results_dir, HEADS_DIR, f"{method}.json"), encoding="utf-8") as handle:
            record = json.load(handle)
        command = export_command(results_dir, method, record.get("ckpt"))
        rows.append(f"<tr><td>{html.escape(DISPLAY.get(method, method))}</td>"
                    f"<td><code>{HEADS_DIR}/{html.escape(method)}.safetensors</code></td>"
                    f"<td><code>{html.escape(command)}</code></td></tr>")
    return ("<h2>Model files</h2><p class=\"note\">Each method's chosen classifier, saved by the search. "
            "Export one with its stage-1 backbone as a single model (torch state dict, "
            "<code>--format torchscript</code> or <code>onnx</code>), then <code>lt_dist evaluate</code> "
            "or <code>lt_dist predict</code> it.</p>"
            "<table><tr><th>method</th><th>head</th><th>export</th></tr>" + "".join(rows) + "</table>")
