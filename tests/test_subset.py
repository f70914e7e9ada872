import numpy as np
import pytest

from lt_dist.errors import UserInputError
from lt_dist.metrics import shot_groups
from lt_dist.shards.sources import Item
from lt_dist.shards.subset import profile_counts, select_long_tailed


def test_exp_profile_is_the_demo_profile():
    counts = profile_counts("exp", 10, 1000, 100)
    expected = [int(np.floor(1000 * 100 ** (-j / 9) + 1e-9)) for j in range(10)]
    assert counts.tolist() == expected == [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]
    groups = shot_groups(counts).tolist()
    assert (groups.count("many"), groups.count("medium"), groups.count("few")) == (5, 3, 2)


def test_pareto_profile_has_the_same_end_points_and_a_faster_head_drop():
    pareto = profile_counts("pareto", 1000, 1280, 256, alpha=6)
    exp = profile_counts("exp", 1000, 1280, 256)
    assert pareto[0] == exp[0] == 1280 and pareto[-1] == exp[-1] == 5
    assert (np.diff(pareto) <= 0).all()
    assert pareto[100] < exp[100]  # heavier head drop
    j, C, alpha = 300, 1000, 6
    assert pareto[j] == int(np.floor(1280 * (1 + j / (C - 1) * (256 ** (1 / alpha) - 1)) ** -alpha + 1e-9))


@pytest.mark.parametrize("kwargs, word", [
    ({"profile": "zipf"}, "zipf"), ({"imbalance": 0.5}, "0.5"), ({"max_per_class": 0}, "max-per-class"),
])
def test_bad_profile_arguments_name_the_value(kwargs, word):
    args = {"profile": "exp", "num_classes": 5, "max_per_class": 10, "imbalance": 10, **kwargs}
    with pytest.raises(UserInputError, match=word):
        profile_counts(**args)


def test_selection_is_seeded_disjoint_and_sized():
    items = [Item(f"c{label}/{i:03d}", label) for label in range(3) for i in range(50)]
    counts = np.array([30, 10, 3])
    train, val = select_long_tailed(items, counts, val_per_class=5, seed=7)
    again, _ = select_long_tailed(list(reversed(items)), counts, val_per_class=5, seed=7)
    other, _ = select_long_tailed(items, counts, val_per_class=5, seed=8)
    assert [i.id for i in train] == [i.id for i in again]  # source order does not matter
    assert [i.id for i in train] != [i.id for i in other]
    assert np.bincount([i.label for i in train]).tolist() == [30, 10, 3]
    assert np.bincount([i.label for i in val]).tolist() == [5, 5, 5]
    assert not {i.id for i in train} & {i.id for i in val}


def test_selection_refuses_a_class_that_is_too_small():
    items = [Item(f"{i}", 0) for i in range(5)]
    with pytest.raises(UserInputError, match="class 0 has 5 images"):
        select_long_tailed(items, np.array([4]), val_per_class=2, seed=0)
