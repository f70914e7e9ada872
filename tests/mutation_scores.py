"""Per-module mutation scores of the last `make mutation` run, as a markdown table.

    python tests/mutation_scores.py 'lt_dist.metrics*' 'lt_dist.losses*'

Reads `mutmut results --all true` (one "name: status" line per mutant). The score is
killed / (killed + survived + timeout): a timeout is counted as NOT killed here, since a
mutant that only makes the tests slow has not been caught by an assertion.
"""
from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path


def mutant_statuses() -> dict[str, str]:
    """{mutant name: status} from mutmut's own report."""
    mutmut = Path(sys.executable).parent / "mutmut"
    text = subprocess.run([str(mutmut), "results", "--all", "true"], capture_output=True, text=True,
                          check=True).stdout
    return dict(re.findall(r"^\s*(\S+): (.+?)\s*$", text, flags=re.MULTILINE))


def module_of(mutant: str) -> str:
    """lt_dist.metrics.x_shot_groups__mutmut_6 -> lt_dist.metrics (methods: xǁClassǁname)."""
    return re.split(r"\.x[_ǁ]", mutant, maxsplit=1)[0]


def main(patterns: list[str]) -> int:
    counts: dict[str, Counter] = defaultdict(Counter)
    for mutant, status in mutant_statuses().items():
        if not patterns or any(fnmatch.fnmatch(mutant, p) for p in patterns):
            counts[module_of(mutant)][status] += 1
    print("| module | mutants | killed | survived | timeout | no tests | score |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for module, c in sorted(counts.items()):
        tested = c["killed"] + c["survived"] + c["timeout"]
        score = 100.0 * c["killed"] / tested if tested else float("nan")
        print(f"| {module} | {sum(c.values())} | {c['killed']} | {c['survived']} | {c['timeout']} | "
              f"{c['no tests']} | {score:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
