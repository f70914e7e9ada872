"""Re-splitting an interrupted epoch over another world size: every sample once, every quota met."""
import json

import numpy as np
import pytest

from lt_dist.data.elastic import ResplitSampler, Share, rank_positions, undelivered
from lt_dist.data.sampler import BalancedSampler, SamplerConfig, class_quotas
from lt_dist.data.balance import class_probs
from lt_dist.dist import World

COUNTS = np.array([40, 20, 12, 6, 2])  # 80 samples


def delivered_rows(counts, config, old_world, old_batch, batches_done, new_world, new_batch, epoch=0):
    """Rows the old world read before stopping plus every row the new world reads of the rest."""
    old = [BalancedSampler(counts, config, World(r, old_world), old_batch) for r in range(old_world)]
    before = [old[r].rank_rows(epoch)[: batches_done * old_batch] for r in range(old_world)]
    shares = [Share(old_world, old_batch, batches_done)]
    after = [ResplitSampler(BalancedSampler(counts, config, World(r, new_world), new_batch), epoch,
                            old[0].epoch_draws, shares).worker_batches(epoch) for r in range(new_world)]
    return np.concatenate(before + [np.concatenate(b) for b in after])


@pytest.mark.parametrize("old_world, old_batch, new_world, new_batch, batches_done", [
    (2, 4, 1, 8, 3), (1, 8, 2, 4, 5), (4, 2, 2, 4, 6), (2, 5, 5, 2, 1)])
def test_an_instance_epoch_yields_every_sample_once_across_two_world_sizes(old_world, old_batch, new_world,
                                                                              new_batch, batches_done):
    rows = delivered_rows(COUNTS, SamplerConfig("instance", seed=3), old_world, old_batch, batches_done,
                          new_world, new_batch)
    assert np.array_equal(np.sort(rows), np.arange(COUNTS.sum()))


@pytest.mark.parametrize("old_world, new_world", [(2, 1), (1, 2), (4, 2)])
def test_a_class_balanced_epoch_still_meets_every_quota(old_world, new_world):
    config = SamplerConfig("class", seed=5)
    rows = delivered_rows(COUNTS, config, old_world, 20 // old_world, 2, new_world, 20 // new_world)
    labels = np.repeat(np.arange(len(COUNTS)), COUNTS)[rows]
    quotas = class_quotas(class_probs(COUNTS, "class", 0, 1), 80)  # computed apart from the sampler
    assert np.array_equal(np.bincount(labels, minlength=len(COUNTS)), quotas) and quotas.tolist() == [16] * 5


def test_the_rest_keeps_the_epochs_order_and_shares_compose():
    # 2 ranks x blocks of 6; each delivered 2 batches of 2 -> positions 0-3 and 6-9 are gone
    rest = undelivered(12, [Share(2, 2, 2)], "pad")
    assert rest.tolist() == [4, 5, 10, 11]
    # then 1 rank read one batch of 3 of that rest
    assert undelivered(12, [Share(2, 2, 2), Share(1, 3, 1)], "pad").tolist() == [11]
    # pad: 3 left over 2 ranks -> blocks of 2, the last wraps to the first position
    assert [rank_positions(np.array([7, 8, 9]), 2, r, "pad").tolist() for r in range(2)] == [[7, 8], [9, 7]]
    assert [rank_positions(np.array([7, 8, 9]), 2, r, "drop").tolist() for r in range(2)] == [[7], [8]]


def test_a_finished_epoch_cannot_be_resplit():
    base = BalancedSampler(COUNTS, SamplerConfig(), World(0, 1), 8)
    with pytest.raises(ValueError, match="no samples left"):
        ResplitSampler(base, 0, 80, [Share(1, 8, 10)])


def test_a_rest_that_does_not_divide_is_padded_like_a_fresh_epoch():
    # 80 - 2 x 5 = 70 left over 4 ranks: blocks of 18, so the first 2 remaining samples come twice
    rows = delivered_rows(COUNTS, SamplerConfig("instance", seed=3), 2, 5, 1, 4, 2)
    assert len(rows) == 82 and set(rows.tolist()) == set(range(80))


def test_the_loader_resumes_an_epoch_on_another_world_and_then_draws_for_it(tmp_path):
    from lt_dist.data.loader import BalancedLoader, LoaderConfig
    from conftest import make_image_folder
    from lt_dist.cli import main

    folder = make_image_folder(tmp_path / "images", [10, 6, 4], size=(8, 8))
    assert main(["pack", str(folder), "--out", str(tmp_path / "ds"), "--no-progress"]) == 0
    split = str(tmp_path / "ds" / "train")

    def loader(rank, world_size, batch):
        return BalancedLoader(LoaderConfig(split, batch, None, SamplerConfig("instance", seed=2), "none", 0),
                              World(rank, world_size))

    old = [loader(r, 2, 2) for r in range(2)]
    seen = []
    for part in old:  # each of 2 ranks delivers 2 batches of 2, then the job stops
        batches = iter(part)
        seen += [next(batches)[0] for _ in range(2)]
    state = old[0].state_dict()
    assert state["epoch_draws"] == 20 and state["shares"] == []
    new = loader(0, 1, 4)
    new.load_state_dict(state)
    assert len(new) == 3  # 20 - 8 = 12 samples left, batches of 4
    seen += [rows for rows, _ in new]
    assert sorted(np.concatenate(seen).tolist()) == list(range(20)) and new.epoch == 1
    assert len(new) == 5 and new.state_dict()["shares"] == []  # the next epoch is the new world's own


def test_a_zero_checkpoint_without_the_full_state_is_refused_on_another_world_size(tmp_path):
    from lt_dist.engine.checkpoint import FULL_ZERO_STATE, check_resume_world
    from lt_dist.errors import UserInputError

    tag = tmp_path / "checkpoints" / "gs000000004-epoch0000-mid"
    tag.mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text(tag.name)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"")
    check_resume_world(str(tmp_path), 3)  # stage 0: the optimizer state is whole, any world resumes
    for rank in range(2):
        (tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    check_resume_world(str(tmp_path), 2)
    with pytest.raises(UserInputError, match="split over 2 ranks and no lt_full_zero_state.pt .* this run has 1: "
                                             "resume on 2 ranks"):
        check_resume_world(str(tmp_path), 1)
    (tag / FULL_ZERO_STATE).write_bytes(b"")
    check_resume_world(str(tmp_path), 1)  # the whole state re-partitions over any world (engine.ds)
    check_resume_world(str(tmp_path), 3)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # several launches; generous for a loaded machine
@pytest.mark.parametrize("old_world, old_per_node, new_world", [(2, 2, 1), (1, 1, 2), (4, 2, 2)])
def test_stage1_preempted_resumes_on_another_world_size_and_continues_the_schedule(tmp_path, old_world,
                                                                                   old_per_node, new_world):
    """2 -> 1, 1 -> 2, and 4 ranks on two nodes -> 2 on one, with ZeRO stage 1 (the default): the global
    batch is kept, the steps and the lr continue."""
    import json
    import math
    import signal
    import time

    from launchers import build_tiny_dataset, finish, free_port, start_ranks, train_args

    root = build_tiny_dataset(tmp_path)
    run = tmp_path / "run"
    ranks = start_ranks(train_args(root, run, "--epochs", 2), old_world, free_port(), old_per_node)
    log = run / "log.jsonl"
    deadline = time.time() + 900
    while not (log.exists() and log.read_text().count('"kind": "train"') >= 2):
        assert all(p.poll() is None for p in ranks) and time.time() < deadline, "no training step to interrupt"
        time.sleep(0.01)
    ranks[0].send_signal(signal.SIGTERM)
    finish(ranks)
    stopped = json.loads((run / "config.json").read_text())
    assert stopped["deepspeed"]["train_micro_batch_size_per_gpu"] == 16 // old_world
    assert stopped["num_nodes"] == old_world // old_per_node

    output = finish(start_ranks(train_args(root, run, "--epochs", 2, "--resume"), new_world, free_port()))[0]
    assert "resumed from" in output
    resumed = json.loads((run / "config.json").read_text())
    assert resumed["world_size"] == new_world
    assert resumed["deepspeed"]["train_micro_batch_size_per_gpu"] == 16 // new_world
    steps = [json.loads(line) for line in log.read_text().splitlines() if '"kind": "train"' in line]
    numbers = [record["step"] for record in steps]
    # 108 training samples, 16 per step: 7 steps an epoch on either world, so 14 in all and none twice
    # (the pre-empted step checkpoints before its log line: that one number is absent)
    assert numbers == sorted(set(numbers)) and numbers[-1] == 14 and len(numbers) >= 13
    for record in steps:  # the lr after step s of the cosine schedule, recomputed here, across the resume
        expected = 0.05 * 0.5 * (1 + math.cos(math.pi * record["step"] / 14))
        assert record["lr"] == pytest.approx(expected, rel=1e-6, abs=1e-12), record
