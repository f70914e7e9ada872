"""lt_dist.report.results: what a finished search writes, from real trials on features written here."""
import numpy as np
from PIL import Image

from lt_dist.report.results import write_results
from lt_dist.stage2.search import run_trial
from test_search_stage2 import write_features


def test_every_method_searched_over_tau_gets_its_curve_and_a_single_tau_gets_none(tmp_path):
    features = str(write_features(tmp_path / "features"))
    trials = [run_trial(features, method, {"tau": tau}, 0, "val")
              for method in ("tau_norm", "logit_adjust") for tau in (0.0, 1.0, 2.0)]
    trials.append(run_trial(features, "crt", {"lr": 0.2, "epochs": 2}, 0, "val"))
    out = tmp_path / "results"
    out.mkdir()
    write_results(str(out), features, trials, 0, "val")
    curves = [np.asarray(Image.open(out / name).convert("L")) for name in ("tau_curve.png", "logit_adjust_tau_curve.png")]
    assert all(c.shape[0] > 200 and c.std() > 0 for c in curves)  # drawn, not blank
    assert not np.array_equal(*curves)  # each its own trials (and title)

    alone = tmp_path / "alone"
    alone.mkdir()
    write_results(str(alone), features, trials[:4], 0, "val")  # logit_adjust with one tau: no curve to draw
    assert (alone / "tau_curve.png").exists() and not (alone / "logit_adjust_tau_curve.png").exists()
