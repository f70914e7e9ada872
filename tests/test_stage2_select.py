"""Stage-2 scoring and selection on hand-made cases."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from lt_dist.stage2.heads import LinearPredictor
from lt_dist.stage2.select import balanced_train_score, evaluate_logits, per_class_counts, select_best
from lt_dist.stage2.types import FeatureSplit


def one_hot_logits(predictions: list[int], num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[predictions]


def test_evaluate_logits_groups_by_training_counts():
    train_counts = np.array([500, 50, 5])  # many, medium, few
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    logits = one_hot_logits([0, 0, 1, 0, 2, 0, 0, 0], 3)  # class 0: 2/2, class 1: 1/2, class 2: 1/4
    scores = evaluate_logits(logits, labels, train_counts)
    assert scores == {"all": pytest.approx(100 * 4 / 8), "many": pytest.approx(100.0),
                      "medium": pytest.approx(50.0), "few": pytest.approx(25.0)}


def test_balanced_train_score_is_the_mean_of_per_class_accuracies():
    # 4 rows of class 0 all right, 1 row of class 1 wrong: instance accuracy 80 %, balanced 50 %
    features = np.array([[1, 0], [2, 0], [3, 0], [4, 0], [5, 0]], dtype=np.float32)
    train = FeatureSplit(features, np.array([0, 0, 0, 0, 1]))
    predictor = LinearPredictor(np.array([[1, 0], [0, 1]], dtype=np.float32))  # always class 0
    assert balanced_train_score(predictor, train) == pytest.approx(50.0)


def test_balanced_train_score_ignores_classes_without_training_rows():
    train = FeatureSplit(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]))
    predictor = LinearPredictor(np.array([[1, 0], [0, 1], [-1, -1]], dtype=np.float32))
    assert balanced_train_score(predictor, train) == pytest.approx(100.0)


def test_select_best_takes_the_highest_and_the_first_on_ties():
    results = [{"tau": 0.5, "score": 70.0}, {"tau": 0.7, "score": 72.0}, {"tau": 0.9, "score": 72.0}]
    assert select_best(results, "score")["tau"] == 0.7
    assert select_best([{"s": math.nan}, {"s": 1.0}], "s")["s"] == 1.0


def test_select_best_rejects_empty_and_missing_keys():
    with pytest.raises(ValueError, match="^no results to select from$"):
        select_best([], "score")
    with pytest.raises(ValueError, match="'score'"):
        select_best([{"score": 1.0}, {"other": 2.0}], "score")


def test_select_best_keeps_a_first_result_that_is_already_the_best():
    assert select_best([{"s": 3.0}], "s") == {"s": 3.0}
    assert select_best([{"s": 3.0, "i": 0}, {"s": 1.0, "i": 1}, {"s": 2.0, "i": 2}], "s")["i"] == 0


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.float64])
def test_per_class_counts_takes_labels_of_any_integer_valued_dtype(dtype):
    """Labels read back from Parquet or a CSV may come as int32 or float: counted as the same classes."""
    labels = np.array([0, 2, 2, 1, 2], dtype=dtype)
    logits = one_hot_logits([0, 2, 1, 1, 0], 3)
    correct, total = per_class_counts(logits, labels)
    assert correct.tolist() == [1, 1, 1] and total.tolist() == [1, 1, 3]


@pytest.mark.parametrize("logits_shape, num_labels", [((4,), 4), ((4, 3), 5), ((2, 4, 3), 2)])
def test_per_class_counts_refuses_shapes_that_do_not_fit_naming_them(logits_shape, num_labels):
    logits, labels = np.zeros(logits_shape, dtype=np.float32), np.zeros(num_labels, dtype=np.int64)
    expected = f"need logits (N, C) and labels (N,), got {logits_shape} and ({num_labels},)"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        per_class_counts(logits, labels)
