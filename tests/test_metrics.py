"""Shot groups and accuracy summaries, against numbers worked out by hand."""
import math

import numpy as np
import pytest

from lt_dist.metrics import FEW_BELOW, GROUPS, MANY_ABOVE, group_accuracy, per_class_accuracy, shot_groups


def test_shot_group_edges_many_above_100_few_below_20():
    # both edges and their neighbours: 100 is medium (many needs > 100), 20 is medium (few needs < 20)
    counts = np.array([1000, 101, 100, 99, 21, 20, 19, 1, 0])
    expected = ["many", "many", "medium", "medium", "medium", "medium", "few", "few", "few"]
    assert shot_groups(counts).tolist() == expected
    assert (MANY_ABOVE, FEW_BELOW) == (100, 20) and GROUPS == ("many", "medium", "few")


def test_shot_groups_keep_the_shape_and_accept_lists():
    assert shot_groups([150, 50, 5]).tolist() == ["many", "medium", "few"]
    assert shot_groups(np.array([[101, 19], [20, 100]])).tolist() == [["many", "few"], ["medium", "medium"]]


def test_per_class_accuracy_is_nan_where_nothing_was_evaluated():
    accuracy = per_class_accuracy(np.array([3, 0, 0, 2]), np.array([4, 5, 0, 2]))
    assert accuracy[0] == 0.75 and accuracy[1] == 0.0 and math.isnan(accuracy[2]) and accuracy[3] == 1.0
    assert accuracy.dtype == np.float64


def test_group_accuracy_means_class_accuracies_within_each_group():
    train_counts = np.array([500, 101, 100, 20, 19, 3])  # many, many, medium, medium, few, few
    correct = np.array([9, 1, 2, 1, 0, 3])
    total = np.array([10, 4, 8, 2, 5, 3])
    result = group_accuracy(correct, total, train_counts)
    assert set(result) == {"all", "many", "medium", "few"}
    assert result["all"] == pytest.approx(100 * 16 / 32)  # over samples, not a mean of classes
    assert result["many"] == pytest.approx(100 * (0.9 + 0.25) / 2)
    assert result["medium"] == pytest.approx(100 * (0.25 + 0.5) / 2)
    assert result["few"] == pytest.approx(100 * (0.0 + 1.0) / 2)


def test_groups_come_from_the_training_counts_not_the_evaluated_counts():
    # the evaluated split is balanced (10 per class): its counts would put every class in "few"
    train_counts = np.array([300, 50, 5])
    result = group_accuracy(np.array([10, 5, 1]), np.array([10, 10, 10]), train_counts)
    assert (result["many"], result["medium"], result["few"]) == pytest.approx((100.0, 50.0, 10.0))


def test_unevaluated_classes_are_left_out_and_an_empty_group_is_nan():
    train_counts = np.array([200, 150, 50])  # no few-shot class
    result = group_accuracy(np.array([2, 0, 1]), np.array([4, 0, 1]), train_counts)
    assert result["many"] == pytest.approx(50.0)  # class 1 had no test sample: not a 0
    assert result["medium"] == pytest.approx(100.0)
    assert math.isnan(result["few"])
    assert result["all"] == pytest.approx(100 * 3 / 5)


def test_all_is_zero_not_an_error_when_nothing_was_evaluated():
    result = group_accuracy(np.zeros(2), np.zeros(2), np.array([200, 5]))
    assert result["all"] == 0.0 and math.isnan(result["many"]) and math.isnan(result["few"])


def test_all_over_a_single_evaluated_sample():
    # the guard against an empty split must not touch a real total of 1
    assert group_accuracy(np.array([1, 0]), np.array([1, 0]), np.array([200, 5]))["all"] == 100.0


def test_summaries_raise_no_numpy_warnings(recwarn):
    # an empty group is NaN by choice, not the mean of an empty array (a RuntimeWarning)
    per_class_accuracy(np.array([0, 1]), np.array([0, 2]))
    group_accuracy(np.array([2, 0, 1]), np.array([4, 0, 1]), np.array([200, 150, 50]))
    assert [str(w.message) for w in recwarn] == []
