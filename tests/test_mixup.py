"""lt_dist.mixup and stage 1's --mixup: the mixing and its loss against a by-hand computation, alpha 0
leaving every batch untouched, and draws fixed by (seed, epoch, rank, batch)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lt_dist.config import TrainConfig, dump, validate
from lt_dist.engine import loop
from lt_dist.losses import build_loss
from lt_dist.mixup import MIXUP_STREAM, mix_batch, mixup_draw, mixup_loss, mixup_seed

COUNTS = np.array([40, 10, 3])


def images_and_labels(batch: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return (torch.tensor(rng.normal(size=(batch, 3, 2, 2)), dtype=torch.float32),
            torch.tensor(rng.integers(0, 3, batch), dtype=torch.long))


def ce_by_hand(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def test_mix_batch_is_lam_x_plus_one_minus_lam_x_of_the_permutation():
    images, labels = images_and_labels()
    perm = np.array([3, 0, 5, 1, 2, 4])
    mixed, labels_a, labels_b = mix_batch(images, labels, 0.3, perm)
    x = images.double().numpy()
    expected = np.stack([0.3 * x[i] + 0.7 * x[perm[i]] for i in range(len(x))])
    np.testing.assert_allclose(mixed.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert labels_a.tolist() == labels.tolist()
    assert labels_b.tolist() == [labels.tolist()[j] for j in perm]
    assert mixed.dtype == torch.float32
    half = mix_batch(images.to(torch.bfloat16), labels, 0.3, perm)[0]
    assert half.dtype == torch.bfloat16  # the engine's dtype is kept


def test_mixup_loss_weighs_the_chosen_loss_against_both_labels():
    logits = torch.tensor([[2.0, 0.1, -1.0], [0.3, 0.2, 0.9], [-0.5, 1.5, 0.0]])
    labels_a, labels_b = torch.tensor([0, 2, 1]), torch.tensor([1, 2, 0])
    expected = 0.25 * ce_by_hand(logits.double().numpy(), labels_a.numpy()) + 0.75 * ce_by_hand(
        logits.double().numpy(), labels_b.numpy())
    assert mixup_loss(build_loss("ce", COUNTS), logits, labels_a, labels_b, 0.25).item() == pytest.approx(expected,
                                                                                                       rel=1e-6)
    # any stage-1 loss: balanced softmax against both labels
    balanced = build_loss("balanced_softmax", COUNTS)
    shifted = logits.double().numpy() + np.log(COUNTS)
    expected = 0.6 * ce_by_hand(shifted, labels_a.numpy()) + 0.4 * ce_by_hand(shifted, labels_b.numpy())
    assert mixup_loss(balanced, logits, labels_a, labels_b, 0.6).item() == pytest.approx(expected, rel=1e-6)


def test_alpha_zero_draws_nothing_and_leaves_the_batch_untouched():
    assert mixup_draw(0.0, 5, seed=123)[0] == 1.0
    np.testing.assert_array_equal(mixup_draw(0.0, 5, seed=123)[1], np.arange(5))
    images, labels = images_and_labels()
    mixed, labels_a, labels_b = mix_batch(images, labels, *mixup_draw(0.0, len(labels), seed=7))
    assert torch.equal(mixed, images) and torch.equal(labels_a, labels) and torch.equal(labels_b, labels)


@pytest.mark.parametrize("alpha", [-0.1, float("nan")])
def test_a_negative_or_nan_alpha_is_refused(alpha):
    with pytest.raises(ValueError, match="mixup alpha must be >= 0"):
        mixup_draw(alpha, 4, seed=0)


def test_draws_are_fixed_by_seed_epoch_rank_and_batch():
    base = mixup_seed(1, 2, 3, 4)
    assert base == mixup_seed(1, 2, 3, 4)
    assert len({base, mixup_seed(0, 2, 3, 4), mixup_seed(1, 0, 3, 4), mixup_seed(1, 2, 0, 4),
                mixup_seed(1, 2, 3, 0)}) == 5
    assert base == int(np.random.SeedSequence([1, 2, 3, 4, MIXUP_STREAM]).generate_state(1)[0])
    lam, perm = mixup_draw(0.2, 8, base)
    again = mixup_draw(0.2, 8, base)
    assert lam == again[0] and np.array_equal(perm, again[1])
    assert sorted(perm.tolist()) == list(range(8)) and 0.0 <= lam <= 1.0


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_lam_follows_beta_alpha_alpha(alpha):
    """Mean 1/2 and variance 1 / (4 (2 alpha + 1)) of Beta(alpha, alpha), over 4000 batches' draws."""
    lams = np.array([mixup_draw(alpha, 2, mixup_seed(0, 0, 0, b))[0] for b in range(4000)])
    assert lams.mean() == pytest.approx(0.5, abs=0.02)
    assert lams.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.1)


class FakeEngine:
    """What train_one_epoch uses of a DeepSpeed engine, over a linear model; records the inputs it saw."""

    device, global_steps = torch.device("cpu"), 0

    def __init__(self):
        torch.manual_seed(0)
        self.module, self.inputs, self.logits = torch.nn.Linear(12, 3), [], []

    def bfloat16_enabled(self) -> bool:
        return False

    def train(self) -> None:
        pass

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.inputs.append(images.detach().clone())
        logits = self.module(images.flatten(1))
        self.logits.append(logits.detach().double().numpy())
        return logits

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.global_steps += 1  # no update: every batch sees the same weights

    def get_lr(self) -> list[float]:
        return [0.1]


class FakeLoader:
    """Batches with BalancedLoader's batches_done counter (incremented as each batch is handed out)."""

    def __init__(self, batches):
        self.batches, self.batches_done = batches, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches[self.batches_done:]:
            self.batches_done += 1
            yield batch


def run_epoch(monkeypatch, alpha: float):
    monkeypatch.setattr(loop.dist, "get_world_size", lambda: 1)  # no process group in this test
    batches = [images_and_labels(seed=b) for b in range(3)]
    engine, loader = FakeEngine(), FakeLoader(batches)
    summary = loop.train_one_epoch(engine, loader, build_loss("ce", COUNTS), epoch=2, num_epochs=5, log_every=100,
                                   on_log=lambda values: None, on_step=lambda: None, show_progress=False,
                                   mixup_alpha=alpha, seed=3, rank=1)
    return batches, engine, summary


def test_the_training_loop_mixes_each_batch_with_its_own_draw(monkeypatch):
    batches, engine, summary = run_epoch(monkeypatch, alpha=0.4)
    losses = []
    for index, ((images, labels), seen, logits) in enumerate(zip(batches, engine.inputs, engine.logits)):
        generator = np.random.default_rng(np.random.SeedSequence([3, 2, 1, index, MIXUP_STREAM]).generate_state(1)[0])
        lam, perm = generator.beta(0.4, 0.4), generator.permutation(len(labels))
        x = images.double().numpy()
        np.testing.assert_allclose(seen.numpy(), lam * x + (1 - lam) * x[perm], rtol=1e-5, atol=1e-6)
        losses.append(lam * ce_by_hand(logits, labels.numpy()) + (1 - lam) * ce_by_hand(logits, labels.numpy()[perm]))
    assert summary["loss"] == pytest.approx(np.mean(losses), rel=1e-5)


def test_the_training_loop_without_mixup_sees_the_batches_as_they_are(monkeypatch):
    batches, engine, summary = run_epoch(monkeypatch, alpha=0.0)
    for (images, _), seen in zip(batches, engine.inputs):
        assert torch.equal(seen, images)
    expected = [ce_by_hand(logits, labels.numpy()) for (_, labels), logits in zip(batches, engine.logits)]
    assert summary["loss"] == pytest.approx(np.mean(expected), rel=1e-5)


@pytest.mark.parametrize("alpha", [-0.5, 10.5, float("nan"), True])
def test_the_config_bounds_alpha(alpha):
    with pytest.raises(ValueError, match="mixup must be a number in \\[0, 10\\]"):
        validate(TrainConfig(data="d", out="o", mixup=alpha))
    validate(TrainConfig(data="d", out="o", mixup=0.2))


def test_train_repr_flag_reaches_the_config_and_config_json(tmp_path):
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "launch"))
    try:
        import train_repr
    finally:
        sys.path.pop(0)
    config = train_repr.config_from_args(train_repr.get_args_parser().parse_args(["--data", "d", "--out", "o",
                                                                                   "--mixup", "0.2"]))
    assert config.mixup == 0.2
    assert train_repr.config_from_args(train_repr.get_args_parser().parse_args(["--data", "d", "--out", "o"])).mixup == 0
    dump(config, str(tmp_path / "config.json"))
    assert json.loads((tmp_path / "config.json").read_text())["train"]["mixup"] == 0.2
