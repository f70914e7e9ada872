import re

import numpy as np
import pytest

from lt_dist.data.sampler import (BalancedSampler, SamplerConfig, SequentialSampler, class_quotas, draw_classes,
                                  occurrence_index, rank_block)
from lt_dist.dist import World

COUNTS = np.array([50, 20, 7, 3, 1])  # 81 samples


def rows_of(sampler, epoch, workers):
    """The rank's rows as its loader workers produce them, batch b from worker b mod W."""
    per_worker = [sampler.worker_batches(epoch, w, workers) for w in range(workers)]
    merged = []
    for b in range(sampler.num_batches):
        merged.append(per_worker[b % workers][b // workers])
    return np.concatenate(merged)


def test_instance_epoch_yields_every_sample_once_over_2_ranks_x_2_workers():
    config = SamplerConfig("instance", seed=3, remainder="pad")
    samplers = [BalancedSampler(COUNTS, config, World(rank, 2), batch_size=4) for rank in range(2)]
    seen = np.concatenate([rows_of(s, epoch=0, workers=2) for s in samplers])
    assert samplers[0].per_rank == samplers[1].per_rank == 41
    assert samplers[0].padded_or_dropped() == 1
    assert len(seen) == 82
    assert np.array_equal(np.sort(seen[:81]), np.arange(81))  # all 81 once ...
    assert seen[81] == seen[0]  # ... and the pad repeats the epoch's first sample


def test_instance_drop_leaves_out_the_remainder_only():
    samplers = [BalancedSampler(COUNTS, SamplerConfig("instance", 5, remainder="drop"), World(r, 2), 8)
                for r in range(2)]
    seen = np.concatenate([s.rank_rows(0) for s in samplers])
    assert len(seen) == 80 and len(np.unique(seen)) == 80 and samplers[0].padded_or_dropped() == -1


def test_rows_stay_inside_their_class_and_classes_restart_in_a_new_order():
    sampler = BalancedSampler(COUNTS, SamplerConfig("class", seed=1), World(), batch_size=10)
    rows = sampler.rank_rows(0)
    starts = np.concatenate([[0], np.cumsum(COUNTS)])
    labels = np.searchsorted(starts, rows, side="right") - 1
    tail = rows[labels == 4]  # one image, drawn about 16 times
    assert len(tail) >= 15 and set(tail) == {80}
    class3 = rows[labels == 3]  # 3 images: every pass of 3 is a permutation of them
    for i in range(0, len(class3) - len(class3) % 3, 3):
        assert sorted(class3[i: i + 3]) == [77, 78, 79]
    passes = [tuple(class3[i: i + 3]) for i in range(0, len(class3) - 2, 3)]
    assert len(set(passes)) > 1  # not the same order every pass


def test_ranks_take_disjoint_parts_of_each_class_order():
    config = SamplerConfig("sqrt", seed=2)
    per_rank = [BalancedSampler(COUNTS, config, World(r, 2), 4).rank_rows(0) for r in range(2)]
    class0 = [set(rows[rows < 50]) for rows in per_rank]
    assert not class0[0] & class0[1]  # fewer class-0 draws than images: no overlap at all


def test_same_seed_same_sequence_other_seed_other_sequence():
    make = lambda seed: BalancedSampler(COUNTS, SamplerConfig("class", seed=seed), World(), 4).rank_rows(2)
    assert np.array_equal(make(7), make(7))
    assert not np.array_equal(make(7), make(8))


def test_worker_count_does_not_change_the_rank_order():
    sampler = BalancedSampler(COUNTS, SamplerConfig("progressive", seed=4, num_epochs=3), World(1, 3), 5)
    assert np.array_equal(rows_of(sampler, 1, 1), rows_of(sampler, 1, 3))


def test_resume_mid_epoch_yields_what_an_uninterrupted_run_would():
    sampler = BalancedSampler(COUNTS, SamplerConfig("sqrt", seed=9), World(0, 2), batch_size=3)
    full = sampler.worker_batches(epoch=1)
    resumed = BalancedSampler(COUNTS, SamplerConfig("sqrt", seed=9), World(0, 2), 3).worker_batches(1, start_batch=5)
    assert all(np.array_equal(a, b) for a, b in zip(full[5:], resumed, strict=True))


def test_progressive_epoch_shares():
    config = SamplerConfig("progressive", seed=0, num_epochs=2)
    sampler = BalancedSampler(COUNTS * 100, config, World(), 64)
    starts = np.concatenate([[0], np.cumsum(COUNTS * 100)])
    for epoch, expected in ((0, COUNTS / COUNTS.sum()), (1, np.full(5, 0.2))):
        labels = np.searchsorted(starts, sampler.rank_rows(epoch), side="right") - 1
        assert np.allclose(np.bincount(labels, minlength=5) / len(labels), expected, atol=1e-3)


def test_helpers():
    assert class_quotas(np.array([0.5, 0.3, 0.2]), 7).tolist() == [4, 2, 1]
    labels = np.array([0, 1, 0, 0, 1, 2])
    assert occurrence_index(labels, 2, 6, 3).tolist() == [1, 2, 1, 0]
    assert rank_block(10, 3, "pad") == 4 and rank_block(10, 3, "drop") == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"config": SamplerConfig("uniform")}, "unknown sampler 'uniform'"),
    ({"config": SamplerConfig(2.0)}, "q must be in"),
    ({"counts": np.zeros(3, dtype=int)}, "holds no samples"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"config": SamplerConfig(remainder="wrap")}, "remainder must be one of"),
    ({"config": SamplerConfig(draw="sobol")}, "draw must be one of"),
])
def test_bad_input_raises_a_clear_message(kwargs, message):
    args = {"counts": COUNTS, "config": SamplerConfig(), "world": World(), "batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        BalancedSampler(args["counts"], args["config"], args["world"], args["batch_size"])


def test_every_epoch_has_its_own_order():
    for strategy in ("instance", "class", 0.5):
        sampler = BalancedSampler(COUNTS, SamplerConfig(strategy, seed=3), World(), batch_size=4)
        epochs = [sampler.rank_rows(epoch) for epoch in range(3)]
        assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2]), strategy


def test_a_stratified_epoch_is_shuffled_not_class_blocks():
    config = SamplerConfig("class", seed=0)
    labels = draw_classes(COUNTS, config, epoch=0, num_draws=500)
    assert np.bincount(labels).tolist() == [100] * 5  # the quotas ...
    # ... in random order: sorted blocks would change label 4 times; a shuffle of 500
    # draws from 5 equal classes changes it about 400 times
    assert np.count_nonzero(np.diff(labels)) > 300
    assert labels.dtype == np.int32


def test_an_instance_epoch_is_shuffled_and_wraps_for_padding():
    labels = draw_classes(COUNTS, SamplerConfig("instance", seed=0), epoch=0, num_draws=83)
    assert np.bincount(labels[:81]).tolist() == COUNTS.tolist()
    assert np.count_nonzero(np.diff(labels[:81])) > 20  # class blocks would give 4 changes
    assert labels[81:].tolist() == labels[:2].tolist()


def test_iid_draws_follow_p_and_the_seed():
    config = SamplerConfig("class", seed=1, draw="iid")
    labels = draw_classes(COUNTS, config, epoch=0, num_draws=5000)
    assert np.allclose(np.bincount(labels) / 5000, 0.2, atol=0.03) and labels.dtype == np.int32
    assert not np.array_equal(labels, draw_classes(COUNTS, config, epoch=1, num_draws=5000))


def test_largest_remainders_get_the_leftover_draws():
    # exact shares 0.2, 0.5, 0.6, 0.7 of 2 draws: the two largest fractions (classes 3, 2) win,
    # not the lowest labels
    assert class_quotas(np.array([0.1, 0.25, 0.3, 0.35]), 2).tolist() == [0, 0, 1, 1]
    assert class_quotas(np.array([0.5, 0.5]), 1).tolist() == [1, 0]  # a tie goes to the lower label
    assert class_quotas(np.array([0.25, 0.75]), 8).tolist() == [2, 6]  # exact: nothing left over
    probs = np.random.default_rng(0).dirichlet(np.ones(7))
    quotas = class_quotas(probs, 101)
    assert quotas.sum() == 101 and np.abs(quotas - probs * 101).max() < 1 and quotas.dtype == np.int64


def test_quotas_give_leftover_draws_to_the_largest_remainders_lowest_label_first():
    # remainders .5 (labels 0-9 and 30-39) and .25 (10-29); 15 draws are left after the floors:
    # every .5 beats every .25, and among the tied .5 the lower labels win: 0-9, then 30-34
    exact = np.array([10.5] + [1.5] * 9 + [1.25] * 20 + [1.5] * 10)  # sums to 64; exact in binary
    quotas = class_quotas(exact / 64, 64)
    expected = np.floor(exact).astype(int)
    expected[list(range(10)) + list(range(30, 35))] += 1
    assert quotas.tolist() == expected.tolist() and quotas.sum() == 64
    # the largest remainder, not the largest class: 5 + 1.7 + 3.3 gives the spare draw to label 1
    assert class_quotas(np.array([0.5, 0.17, 0.33]), 10).tolist() == [5, 2, 3]


def test_rank_block_needs_one_sample_per_rank():
    assert rank_block(4, 4, "drop") == 1 and rank_block(3, 4, "pad") == 1
    with pytest.raises(ValueError, match="^an epoch of 3 samples cannot feed 4 ranks$"):
        rank_block(3, 4, "drop")


def test_an_epoch_of_labels_is_int32():
    """4 bytes per draw: an iNaturalist-sized epoch of labels stays small in every loader worker."""
    for strategy in ("instance", "class"):
        assert draw_classes(COUNTS, SamplerConfig(strategy), 0, 200).dtype == np.int32


def test_sampler_refuses_bad_counts_and_epochs_in_one_line_and_takes_a_single_class():
    message = "the manifest holds no samples: cannot sample an empty dataset"
    for counts in ([], [0, 0], [[3, 4]]):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            BalancedSampler(np.array(counts), SamplerConfig("class"), World(), 2)
    with pytest.raises(ValueError, match="^num_epochs must be >= 1, got 0$"):
        BalancedSampler(COUNTS, SamplerConfig("progressive", num_epochs=0), World(), 2)
    single = BalancedSampler(np.array([5]), SamplerConfig("class"), World(), 2)
    assert sorted(single.rank_rows(0).tolist()) == [0, 1, 2, 3, 4]


def test_sequential_sampler_deals_rows_to_ranks_and_batches_to_workers():
    samplers = [SequentialSampler(11, World(rank, 3), batch_size=2) for rank in range(3)]
    assert [s.rank_rows(5).tolist() for s in samplers] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert [(s.per_rank, s.num_batches) for s in samplers] == [(4, 2), (4, 2), (3, 2)]
    rank0 = samplers[0]
    assert [b.tolist() for b in rank0.worker_batches(0)] == [[0, 3], [6, 9]]
    assert [b.tolist() for b in rank0.worker_batches(0, worker=1, num_workers=2)] == [[6, 9]]
    assert [b.tolist() for b in rank0.worker_batches(0, worker=0, num_workers=2)] == [[0, 3]]
    assert [b.tolist() for b in rank0.worker_batches(0, start_batch=1)] == [[6, 9]]
    assert rank0.rows.dtype == np.int64
    assert [b.tolist() for b in SequentialSampler(1, World(), batch_size=1).worker_batches(0)] == [[0]]
    for num_samples, batch_size in ((0, 2), (5, 0)):
        with pytest.raises(ValueError, match=f"^need num_samples >= 1 and batch_size >= 1, got {num_samples}, "
                                             f"{batch_size}$"):
            SequentialSampler(num_samples, World(), batch_size)


def test_worker_batches_default_to_every_batch_of_the_rank():
    sampler = BalancedSampler(COUNTS, SamplerConfig("class", seed=2), World(), batch_size=10)
    every = sampler.worker_batches(0)
    assert len(every) == sampler.num_batches
    assert np.array_equal(np.concatenate(every), sampler.rank_rows(0))
