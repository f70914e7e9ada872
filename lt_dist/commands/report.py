"""`lt_dist report`: rebuild report.html from a results folder."""
from __future__ import annotations


def add_parsers(subparsers) -> None:
    """Register report."""
    parser = subparsers.add_parser(
        "report", help="render results/NAME/report.html",
        description="Build a self-contained HTML report (table, class-count curve, tau curve, weight "
        "norms, per-class accuracy against class size) from a stage-2 results folder.")
    parser.add_argument("results", help="results/NAME written by tune/search_stage2.py")
    parser.add_argument("--out", help="HTML file (default: RESULTS/report.html)")
    parser.set_defaults(run=run_report)


def run_report(args) -> int:
    from lt_dist.report.html import build_report

    print(f"wrote {build_report(args.results, args.out)}")
    return 0
