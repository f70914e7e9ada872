"""The stage-2 search without Ray: trial list, one trial, and choosing the best per method.

A trial = (method, params). It fits on the training features and scores val (and
the balanced training estimate when selecting on train); it never sees test. After
the choice, `evaluate_chosen` refits each method's chosen setting once and scores
test: the only time test is read.
"""
from __future__ import annotations

import json
import time

import numpy as np

from lt_dist.stage2.methods import METHODS, SEARCH_SPACE
from lt_dist.metrics import per_class_accuracy
from lt_dist.stage2.select import balanced_train_score, evaluate_logits, per_class_counts
from lt_dist.stage2.store import load_features, read_train_views
from lt_dist.stage2.types import FeatureSplit, StageOneClassifier

SELECT_ON = ("val", "train")
TAU_GRIDS = ("tau_norm", "logit_adjust")  # the methods searched over tau alone (--taus)
GROUP_KEYS = ("many", "medium", "few", "all")


def trial_list(methods: list[str], taus: list[float] | None = None, lrs: list[float] | None = None) -> list[dict]:
    """[{"method", "params"}] for every method and setting of its search space.

    taus replaces the tau grids (tau_norm's and logit_adjust's); lrs replaces the learning rates of the
    methods whose whole search is over lr.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if taus is not None and any(tau < 0 for tau in taus):
        raise ValueError(f"tau must be >= 0, got {min(taus)}")
    trials = []
    for method in methods:
        space = SEARCH_SPACE[method]
        if method in TAU_GRIDS and taus is not None:
            space = [{"tau": float(tau)} for tau in taus]
        elif lrs is not None and all("lr" in params for params in space):
            space = [{**space[0], "lr": float(lr)} for lr in lrs]
        trials += [{"method": method, "params": dict(params)} for params in space]
    return trials


def check_select_on(select_on: str, has_val: bool) -> None:
    """Raise ValueError for an unknown criterion or selecting on a val split that is not there."""
    if select_on not in SELECT_ON:
        raise ValueError(f"--select-on must be one of {', '.join(SELECT_ON)}, got {select_on!r}")
    if select_on == "val" and not has_val:
        raise ValueError("no val.arrow: extract the val split, or select on the training set (--select-on train)")


def _fit(features_dir: str, splits: tuple[str, ...], method: str, params: dict, seed: int):
    """Fit on train; val (when stored) rides along as train.holdout for keep_best, so the refit
    that is scored on test chooses its epoch on val exactly as its trial did."""
    stored_splits, stored = load_features(features_dir, splits=tuple(dict.fromkeys((*splits, "val"))))
    classifier = StageOneClassifier(stored["weight"], stored["bias"], stored["train_counts"],
                                    stored.get("cosine_scale"))
    val = stored_splits.get("val")
    train = FeatureSplit(stored_splits["train"].features, stored_splits["train"].labels,
                         views=read_train_views(features_dir),
                         holdout=None if val is None else FeatureSplit(val.features, val.labels))
    return METHODS[method](train, classifier, params, seed), stored_splits, classifier, train


def _scores(predictor, split, classifier: StageOneClassifier, prefix: str) -> dict:
    scores = evaluate_logits(predictor(split.features), split.labels, classifier.train_counts)
    return {f"{prefix}_{key}": float(scores[key]) for key in GROUP_KEYS}


def run_trial(features_dir: str, method: str, params: dict, seed: int, select_on: str) -> dict:
    """Fit one (method, params) and score it on val; returns a flat dict of metrics (percent)."""
    started = time.perf_counter()
    predictor, splits, classifier, train = _fit(features_dir, ("train", "val"), method, params, seed)
    result = {"method": method, "params": json.dumps(params, sort_keys=True), "seed": seed}
    if "val" in splits:
        result.update(_scores(predictor, splits["val"], classifier, "val"))
    if select_on == "train":
        result["train_balanced"] = float(balanced_train_score(predictor, train))
    result["selection_score"] = result["train_balanced" if select_on == "train" else "val_all"]
    result["seconds"] = time.perf_counter() - started
    if method == "learned_tau":
        result["learned_tau"] = float(predictor.tau)
    return result


def best_per_method(results: list[dict]) -> dict[str, dict]:
    """The highest selection_score per method (ties: the first in trial order). Never looks at test."""
    best: dict[str, dict] = {}
    for result in results:
        current = best.get(result["method"])
        if current is None or result["selection_score"] > current["selection_score"]:
            best[result["method"]] = result
    return best


def evaluate_chosen(features_dir: str, method: str, params: dict, seed: int) -> dict:
    """Refit a chosen setting and score test once.

    Returns:
        {"scores": {"test_many", ..., "test_all"} ({} without a test split),
         "per_class": (C,) test accuracy in percent (None without test),
         "weight": (C, D) effective weights for the weight-norm figure, or None,
         "predictor": the refitted predictor (saved under results/NAME/heads/)}.
    """
    predictor, splits, classifier, _ = _fit(features_dir, ("train", "test"), method, params, seed)
    weight = getattr(predictor, "weight", None)
    chosen = {"scores": {}, "per_class": None, "weight": None if weight is None else np.asarray(weight),
              "predictor": predictor}
    if "test" in splits:
        logits = predictor(splits["test"].features)
        chosen["scores"] = _scores(predictor, splits["test"], classifier, "test")
        correct, total = per_class_counts(logits, splits["test"].labels)
        chosen["per_class"] = 100 * per_class_accuracy(correct, total)
    return chosen
