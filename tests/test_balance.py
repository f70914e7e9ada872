import json
import re

import numpy as np
import pytest
from scipy import stats as scipy_stats

from conftest import SPLITS, needs_splits
from lt_dist.data.balance import BALANCERS, class_probs, is_exact_instance, power_probs, progress_fraction
from lt_dist.data.sampler import SamplerConfig, draw_classes

IMAGENET_LT_FILE = SPLITS / "ImageNet_LT_train_class_counts.json"
# read at import only where it exists: without it the tests that use it are skipped (needs_splits)
IMAGENET_LT = np.array(json.loads(IMAGENET_LT_FILE.read_text())) if IMAGENET_LT_FILE.is_file() else None


@pytest.mark.parametrize("strategy, q", [("instance", 1.0), ("class", 0.0), ("sqrt", 0.5), (0.25, 0.25)])
def test_named_strategies_are_powers_of_the_counts(strategy, q):
    counts = np.array([1000, 100, 10, 1])
    expected = counts ** q / (counts ** q).sum()
    assert np.allclose(class_probs(counts, strategy), expected)


@needs_splits
def test_progressive_moves_from_instance_to_class():
    counts = IMAGENET_LT
    first = class_probs(counts, "progressive", epoch=0, num_epochs=90)
    last = class_probs(counts, "progressive", epoch=89, num_epochs=90)
    middle = class_probs(counts, "progressive", epoch=30, num_epochs=91)
    assert np.allclose(first, class_probs(counts, "instance"))
    assert np.allclose(last, class_probs(counts, "class"))
    assert np.allclose(middle, (2 / 3) * power_probs(counts, 1) + (1 / 3) * power_probs(counts, 0))
    assert np.allclose(class_probs(counts, "progressive", 0, 1), class_probs(counts, "instance"))


def test_empty_class_gets_zero_even_when_class_balanced():
    assert class_probs(np.array([3, 0, 1]), "class").tolist() == [0.5, 0.0, 0.5]


def test_name_table_is_the_one_entry_point():
    assert set(BALANCERS) == {"instance", "class", "sqrt", "progressive"}


@pytest.mark.parametrize("strategy, message", [("balanced", "unknown sampler 'balanced'"),
                                               (1.5, "q must be in \\[0, 1\\], got 1.5"),
                                               (-0.1, "got -0.1")])
def test_bad_strategy_raises_naming_it(strategy, message):
    with pytest.raises(ValueError, match=message):
        class_probs(np.array([3, 1]), strategy)


def test_epoch_outside_the_schedule_raises():
    with pytest.raises(ValueError, match="epoch 5 is outside"):
        class_probs(np.array([3, 1]), "progressive", epoch=5, num_epochs=5)


def _draw(strategy, draw, draws=200_000, seed=11):
    config = SamplerConfig(strategy=strategy, seed=seed, draw=draw)
    labels = draw_classes(IMAGENET_LT, config, epoch=0, num_draws=draws)
    observed = np.bincount(labels, minlength=len(IMAGENET_LT))
    target = class_probs(IMAGENET_LT, strategy)
    return observed, target, 0.5 * np.abs(observed / draws - target).sum()


@needs_splits
@pytest.mark.parametrize("strategy", [1.0 - 1e-12, "sqrt", "class"])  # 1 - 1e-12: q = 1 by draws
def test_200k_stratified_draws_match_p_on_imagenet_lt(strategy):
    observed, target, total_variation = _draw(strategy, "stratified")
    assert total_variation < 0.01
    assert np.abs(observed - target * 200_000).max() <= 1  # quotas are exact up to rounding
    _, p_value = scipy_stats.chisquare(observed, target * 200_000)
    assert p_value > 0.01


@needs_splits
@pytest.mark.parametrize("strategy", ["instance", "sqrt", "class"])
def test_200k_iid_draws_pass_chi_square_on_imagenet_lt(strategy):
    observed, target, total_variation = _draw(strategy, "iid")
    _, p_value = scipy_stats.chisquare(observed, target * 200_000)
    assert p_value > 0.01, (strategy, p_value)
    # i.i.d. cannot get per-class TV under 0.01 here: E[TV] ~ 0.02-0.03 over 1000 classes
    assert total_variation < 0.05
    many = IMAGENET_LT > 100
    assert abs(observed[many].sum() / 200_000 - target[many].sum()) < 0.01


@needs_splits
def test_iid_draws_are_really_random():
    """A sampler that always returned the quotas would fail this: i.i.d. must vary by seed."""
    first, _, tv_first = _draw("class", "iid", seed=1)
    second, _, _ = _draw("class", "iid", seed=2)
    assert not np.array_equal(first, second) and tv_first > 0.01


@pytest.mark.parametrize("q", [1.5, -0.5, 2.0])
def test_power_probs_refuses_q_outside_0_1_naming_it(q):
    with pytest.raises(ValueError, match=f"q must be in \\[0, 1\\], got {q}"):
        power_probs(np.array([3, 1]), q)


@pytest.mark.parametrize("counts, shape", [(np.array([3, -1, 2]), "(3,)"), (np.array([]), "(0,)"),
                                           (np.array([[3, 1], [2, 2]]), "(2, 2)"), (np.array([0, 0]), "(2,)")])
def test_power_probs_refuses_bad_counts(counts, shape):
    with pytest.raises(ValueError, match=f"non-empty 1-D array of counts >= 0 with a positive total, got shape "
                                         f"{re.escape(shape)}"):
        power_probs(counts, 0.5)


def test_fixed_policies_refuse_a_negative_epoch_and_ignore_the_schedule():
    with pytest.raises(ValueError, match="epoch must be >= 0, got -1"):
        class_probs(np.array([3, 1]), "sqrt", epoch=-1)
    assert np.allclose(class_probs(np.array([9, 1]), "sqrt", epoch=7, num_epochs=3), [0.75, 0.25])


def test_progressive_in_repo_counts_and_the_fraction():
    counts = np.array([60, 30, 10])
    for epoch, fraction in ((0, 0.0), (1, 0.25), (4, 1.0)):
        expected = (1 - fraction) * counts / 100 + fraction / 3
        assert np.allclose(class_probs(counts, "progressive", epoch, 5), expected), epoch
    assert progress_fraction(0, 1) == 0.0 and progress_fraction(2, 3) == 1.0
    for epoch, num_epochs in ((-1, 5), (5, 5), (0, 0)):
        with pytest.raises(ValueError, match=f"epoch {epoch} is outside 0 .. num_epochs-1 \\(num_epochs={num_epochs}\\)"):
            progress_fraction(epoch, num_epochs)


def test_q_as_text_and_exact_instance():
    assert np.allclose(class_probs(np.array([4, 1]), "0.5"), [2 / 3, 1 / 3])
    assert is_exact_instance("instance") and is_exact_instance(1.0) and is_exact_instance("1")
    assert not is_exact_instance("progressive") and not is_exact_instance("class") and not is_exact_instance(0.99)
    with pytest.raises(ValueError, match="unknown sampler 'x'; choose one of instance, class, sqrt, progressive "
                                         "or a number q in \\[0, 1\\]"):
        class_probs(np.array([1]), "x")
    with pytest.raises(ValueError, match="unknown sampler None"):
        class_probs(np.array([1]), None)


def test_edges_of_q_and_of_the_counts():
    counts = np.array([3, 1])
    assert np.allclose(class_probs(counts, 0.0), [0.5, 0.5]) and np.allclose(class_probs(counts, 1.0), [0.75, 0.25])
    assert class_probs(np.array([5]), "sqrt").tolist() == [1.0]  # one class
    assert power_probs(np.array([1, 0]), 1.0).tolist() == [1.0, 0.0]  # a total of 1
    assert np.allclose(class_probs(counts, "progressive"), [0.75, 0.25])  # default: epoch 0 of 1


@pytest.mark.parametrize("counts, total", [(np.array([3, -1, 2]), "4.0"), (np.array([]), "0"), (np.array([0, 0]), "0.0")])
def test_bad_counts_message_names_the_total(counts, total):
    with pytest.raises(ValueError, match=f"and total {total}$"):
        power_probs(counts, 0.5)


def test_a_numeric_q_refuses_a_negative_epoch():
    with pytest.raises(ValueError, match="^epoch must be >= 0, got -2$"):
        class_probs(np.array([3, 1]), 0.25, epoch=-2)
