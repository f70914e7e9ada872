"""lt_dist.stage2.training: the one loop of the trained heads; here keep_best (the best-on-val epoch)."""
import numpy as np
import pytest
import torch

from lt_dist.stage2.methods import fit_method
from lt_dist.stage2.training import TrainConfig, steps_per_epoch, train_head, uniform_init
from lt_dist.stage2.types import FeatureSplit
from stage2_blobs import blobs, joint, train  # noqa: F401 (fixtures)

TRAIN_COUNTS = [300, 100, 30, 10]


def linear_head(num_classes: int = 4, dim: int = 16):
    generator = torch.Generator().manual_seed(0)
    weight = uniform_init((num_classes, dim), dim, generator).requires_grad_()
    bias = uniform_init((num_classes,), dim, generator).requires_grad_()
    return weight, bias


def test_keep_best_ends_with_the_epoch_of_best_holdout_top1_and_ties_go_to_the_earlier():
    holdout = blobs([20] * 4, seed=3, separation=0.5)
    train = blobs(TRAIN_COUNTS, seed=1, separation=0.5)
    train.holdout = holdout
    config = TrainConfig(epochs=8, batch_size=32, lr=0.8, keep_best=True)
    per_epoch, steps, snapshots = steps_per_epoch(len(train.labels), 32), [0], []
    weight, bias = linear_head()

    def record() -> None:  # the parameters at the end of every epoch, as training leaves them
        steps[0] += 1
        if steps[0] % per_epoch == 0:
            snapshots.append((weight.detach().numpy().copy(), bias.detach().numpy().copy()))

    train_head([{"params": [weight, bias], "weight_decay": 0.0}], lambda x: x @ weight.T + bias, train, 4,
               config, seed=0, after_step=record)
    # top-1 of each epoch's head on the holdout, computed here with numpy
    accuracy = [float(np.mean((holdout.features @ w.T + b).argmax(1) == holdout.labels)) for w, b in snapshots]
    best = int(np.argmax(accuracy))  # the first of equals
    assert len(snapshots) == 8 and best != 7, accuracy  # the fixture has a best epoch that is not the last
    assert accuracy.count(accuracy[best]) > 1, accuracy  # ... and a later epoch as good: the earlier is kept
    np.testing.assert_array_equal(weight.detach().numpy(), snapshots[best][0])
    np.testing.assert_array_equal(bias.detach().numpy(), snapshots[best][1])


def test_without_keep_best_the_last_epoch_is_kept():
    train = blobs(TRAIN_COUNTS, seed=1, separation=0.5)
    train.holdout = blobs([20] * 4, seed=3, separation=0.5)
    weight, bias = linear_head()
    last = []
    train_head([{"params": [weight, bias], "weight_decay": 0.0}], lambda x: x @ weight.T + bias, train, 4,
               TrainConfig(epochs=3, batch_size=32, lr=0.8), seed=0,
               after_step=lambda: last.__setitem__(slice(None), [weight.detach().numpy().copy()]))
    np.testing.assert_array_equal(weight.detach().numpy(), last[0])


def test_keep_best_without_val_features_is_refused():
    weight, bias = linear_head()
    with pytest.raises(ValueError, match="keep_best needs val features"):
        train_head([{"params": [weight, bias]}], lambda x: x @ weight.T + bias, blobs(TRAIN_COUNTS, seed=1), 4,
                   TrainConfig(epochs=1, keep_best=True), seed=0)


@pytest.mark.parametrize("method", ["crt", "lws", "balanced_softmax", "wb"])
def test_every_trained_method_passes_keep_best_to_the_loop(train, joint, method):
    with pytest.raises(ValueError, match="keep_best needs val features"):  # the param reaches train_head
        fit_method(method, train, joint, {"epochs": 1, "keep_best": True})
    with_val = FeatureSplit(train.features, train.labels, holdout=blobs([40] * 5, seed=3))
    logits = {keep: fit_method(method, with_val, joint, {"epochs": 4, "keep_best": keep})(with_val.holdout.features)
              for keep in (False, True)}
    top1 = {keep: float(np.mean(v.argmax(1) == with_val.holdout.labels)) for keep, v in logits.items()}
    assert top1[True] >= top1[False]  # the kept epoch is at least as good on val as the last one
