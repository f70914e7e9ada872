import json

import numpy as np
import pytest

from conftest import make_image_folder, run_cli
from lt_dist.data.audit import share_table


def test_share_table_groups_add_up():
    counts = np.array([200, 150, 50, 5])  # many, many, medium, few
    target = np.array([0.25, 0.25, 0.25, 0.25])
    drawn = np.array([0] * 30 + [1] * 20 + [2] * 25 + [3] * 25)
    rows = {row["group"]: row for row in share_table(counts, target, drawn)}
    assert rows["many"]["classes"] == 2 and rows["many"]["target"] == 0.5
    assert rows["many"]["empirical"] == pytest.approx(0.5) and rows["many"]["tv"] == pytest.approx(0.05)
    assert rows["total"]["tv"] == pytest.approx(0.5 * (0.05 + 0.05))
    assert rows["few"]["tv"] == 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    images = make_image_folder(root / "img", [120, 30, 5], size=(8, 8))
    from lt_dist.cli import main

    assert main(["pack", str(images), "--out", str(root / "ds"), "--no-progress", "--check", "none"]) == 0
    return root / "ds"


@pytest.mark.parametrize("sampler, draw, limit", [("class", "stratified", 0.001), ("sqrt", "iid", 0.01),
                                                  ("0.25", "stratified", 0.001)])
def test_sample_stats_cli_runs_the_interleaver(dataset, capsys, sampler, draw, limit):
    status, out, err = run_cli(["sample-stats", dataset, "--sampler", sampler, "--draws", 50_000,
                                "--draw", draw, "--json"], capsys)
    assert status == 0, err
    rows = {row["group"]: row for row in json.loads(out)}
    counts = np.array([120, 30, 5])
    target = counts ** (0 if sampler == "class" else float(0.5 if sampler == "sqrt" else sampler))
    target = target / target.sum()
    assert rows["many"]["target"] == pytest.approx(target[0])
    assert rows["total"]["tv"] < limit


def test_sample_stats_progressive_and_errors(dataset, capsys):
    status, out, _ = run_cli(["sample-stats", dataset, "--sampler", "progressive", "--epoch", 2,
                              "--epochs", 3], capsys)
    assert status == 0 and "few" in out and "0.3333" in out  # last epoch: class-balanced
    status, _, err = run_cli(["sample-stats", dataset, "--sampler", "fancy"], capsys)
    assert status == 2 and "unknown sampler 'fancy'" in err
