"""The arithmetic of bench/stage2_methods.py and bench/stage2_options.py on hand-made scores
(the benchmarks themselves read runs of minutes; these check what they compute from them)."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import REPO


def load(name: str):
    sys.path.insert(0, str(REPO))  # bench.common, as the scripts find it
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO))


methods, options = load("stage2_methods"), load("stage2_options")


def scores(all_: float) -> dict:
    return {"many": 90.0, "medium": 60.0, "few": 40.0, "all": all_}


def test_gap_closed_is_the_share_of_joint_to_ceiling():
    assert methods.gap_closed(80.0, 70.0, 90.0) == pytest.approx(0.5)
    assert methods.gap_closed(70.0, 70.0, 90.0) == 0.0 and methods.gap_closed(95.0, 70.0, 90.0) == 1.25


def test_the_methods_table_averages_seeds_and_each_seed_uses_its_own_joint_and_ceiling():
    from lt_dist.report.tables import ORDER

    # seed 0: joint 70, every method 80, ceiling 90 -> 50%; seed 1: joint 60, method 80, ceiling 70 -> 200%
    runs = {"instance": {0: {m: scores(70.0 if m == "joint" else 80.0) for m in ORDER},
                         1: {m: scores(60.0 if m == "joint" else 80.0) for m in ORDER}}}
    text = methods.table(runs, {0: 90.0, 1: 70.0})
    crt = next(line for line in text.splitlines() if line.startswith("| instance: cRT |"))
    assert crt == "| instance: cRT | 90.0 ± 0.0 | 60.0 ± 0.0 | 40.0 ± 0.0 | 80.0 ± 0.0 | 125% |"
    joint = next(line for line in text.splitlines() if line.startswith("| instance: Joint |"))
    assert joint.endswith("| 65.0 ± 7.1 | 0% |")  # std of (70, 60) with ddof 1
    assert methods.table(runs, {0: None, 1: None}).splitlines()[2].endswith("| - |")  # no ceiling yet


def test_the_options_table_has_one_row_per_variant_in_set_syntax():
    runs = {0: {options.label(v): {m: {"all": 80.0 + i, "few": 70.0} for m in options.METHODS}
                for i, v in enumerate(options.VARIANTS)}}
    lines = options.table(runs).splitlines()
    assert lines[2] == "| lr_schedule=step, keep_best=false | 80.0 ± 0.0 | 70.0 ± 0.0 | 80.0 ± 0.0 | 70.0 ± 0.0 |"
    assert lines[5].startswith("| lr_schedule=epoch, keep_best=true | 83.0")


def test_another_representation_shows_joint_crt_and_its_best_method_against_the_instance_joint():
    from lt_dist.report.tables import ORDER

    instance = {0: {m: scores(70.0 if m == "joint" else 80.0) for m in ORDER}}
    mixup = {0: {m: scores({"joint": 74.0, "crt": 82.0, "wb": 86.0}.get(m, 81.0)) for m in ORDER}}
    lines = methods.table({"instance": instance, "mixup": mixup}, {0: 90.0}).splitlines()
    mixup_rows = [line for line in lines if line.startswith("| mixup:")]
    assert [row.split(" | ")[0] for row in mixup_rows] == ["| mixup: Joint", "| mixup: cRT", "| mixup: best, WB"]
    # the gap runs from the instance-balanced Joint (70) to the ceiling (90): (86 - 70) / 20
    assert mixup_rows[2].endswith("| 86.0 ± 0.0 | 80% |") and mixup_rows[0].endswith("| 20% |")
