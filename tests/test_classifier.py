"""Stage 2 through the frozen backbone (engine.classifier, launch/train_classifier.py).

The launcher test starts the real DeepSpeed launcher (2 CPU processes, gloo) on a
stage-1 best_model.pt written in the real format, and checks the result against what
the official protocol implies, computed here independently: backbone weights untouched,
BN statistics re-estimated (or kept with --bn frozen), LWS rows parallel to the
stage-1 rows, the learning rate held per epoch on 0.5 lr (1 + cos(pi t / T)).
"""
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, make_image_folder
from lt_dist.engine.checkpoint import save_best_model
from lt_dist.engine.classifier import FrozenBackbone, LWSHead, build_frozen_model
from lt_dist.engine.ds import epoch_cosine_schedule
from lt_dist.models.resnet import build_model

SCRIPT = REPO / "launch" / "train_classifier.py"
LAUNCHER = Path(sys.executable).parent / "deepspeed"
LR = 0.05
DS_CONFIG = {"train_batch_size": 16, "optimizer": {"type": "SGD", "params": {"lr": LR, "momentum": 0.9,
             "weight_decay": 5e-4}}, "bf16": {"enabled": True}, "zero_optimization": {"stage": 1},
             "zero_allow_untested_optimizer": True, "steps_per_print": 1000000}
COUNTS = [40, 20, 8, 4]


def stage1_best(seed: int = 0) -> dict:
    """A resnet10 stage-1 model in best_model.pt's format, with non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = build_model("resnet10", len(COUNTS), small_input=True)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return {"model": model, "info": {"arch": "resnet10", "num_classes": len(COUNTS), "small_input": True,
                                     "epoch": 0, "val": {}, "train_counts": COUNTS,
                                     "class_names": [f"class_{j:02d}" for j in range(len(COUNTS))],
                                     "eval_preset": "small_eval", "image_size": 16}}


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """shards (train 40/20/8/4 + 2 val per class, test 3 per class), a stage-1 run folder, ds.json."""
    root = tmp_path_factory.mktemp("stage2bb")
    from lt_dist.cli import main

    train = make_image_folder(root / "train_images", [c + 2 for c in COUNTS], size=(20, 20))
    test = make_image_folder(root / "test_images", [3] * len(COUNTS), seed=5, size=(20, 20))
    assert main(["pack", str(train), "--out", str(root / "ds"), "--val-per-class", "2", "--no-progress"]) == 0
    assert main(["pack", str(test), "--out", str(root / "ds"), "--split", "test", "--no-progress"]) == 0
    best = stage1_best()
    (root / "run").mkdir()
    save_best_model(str(root / "run"), best["model"], best["info"])
    (root / "run" / "config.json").write_text(json.dumps({"train": {"train_preset": "small_train"}}))
    (root / "ds.json").write_text(json.dumps(DS_CONFIG))
    return root


def environment() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(stage1, out, *extra, procs: int = 1):
    """procs 1: a plain process (fast); more: the DeepSpeed launcher with gloo."""
    start = [sys.executable] if procs == 1 else [str(LAUNCHER), "--num_gpus", str(procs), "--master_port",
                                                 str(free_port())]
    command = [*start, str(SCRIPT), "--ds_config", str(stage1 / "ds.json"), "--init", str(stage1 / "run"),
               "--data", str(stage1 / "ds"),
               "--out", str(out), "--decoder", "torchvision", "--workers", "0", "--eval-batch-size", "8",
               "--log-every", "1", *map(str, extra)]
    result = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


def bn_buffers(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("backbone.") and ("running_" in k)}


def backbone_parameters(state: dict, model) -> dict:
    names = {f"backbone.{n}" for n, _ in model.backbone.named_parameters()}
    return {k: v for k, v in state.items() if k in names}


def test_lws_through_the_backbone_keeps_the_backbone_and_reestimates_bn(stage1, tmp_path):
    out = tmp_path / "lws"
    launch(stage1, out, "--method", "lws", "--epochs", "2")
    before = torch.load(stage1 / "run" / "best_model.pt", weights_only=False)
    after = torch.load(out / "best_model.pt", weights_only=False)
    model = build_model("resnet10", len(COUNTS), small_input=True)
    # frozen: every backbone parameter bit-identical; BN statistics re-estimated on the new batches
    for name, value in backbone_parameters(before["state_dict"], model).items():
        assert torch.equal(value, after["state_dict"][name].float()), name
    moved = [k for k, v in bn_buffers(before["state_dict"]).items()
             if not torch.allclose(v, after["state_dict"][k].float())]
    assert len(moved) == len(bn_buffers(before["state_dict"]))
    # LWS: row j of the folded fc is f_j w_j and its bias f_j b_j, one f_j per class
    weight0, bias0 = before["state_dict"]["fc.weight"].double(), before["state_dict"]["fc.bias"].double()
    weight1, bias1 = after["state_dict"]["fc.weight"].double(), after["state_dict"]["fc.bias"].double()
    scales = (weight1 * weight0).sum(1) / (weight0 * weight0).sum(1)  # least-squares f_j per row
    assert torch.allclose(weight1, scales[:, None] * weight0, atol=1e-6)
    assert torch.allclose(bias1, scales * bias0, atol=1e-6)
    assert not torch.allclose(scales, torch.ones_like(scales))
    assert after["stage2"] == {"method": "lws", "bn": "update", "init": str(stage1 / "run")}
    # per-epoch cosine: every step of epoch t at LR * 0.5 (1 + cos(pi t / T)), T = 2. A line is
    # logged after optimizer step g (1-based) and shows the lr of the next step, index g.
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    per_epoch = sum(r["epoch"] == 0 for r in steps)
    assert {r["epoch"] for r in steps} == {0, 1} and len(steps) == 2 * per_epoch
    for record in steps:
        epoch_of_next = min(record["step"] // per_epoch, 2)
        assert record["lr"] == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi * epoch_of_next / 2)))
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert 0 <= metrics["all"] <= 100 and metrics["best_epoch"] in (0, 1)


@pytest.mark.slow
def test_frozen_bn_keeps_the_stage1_statistics_under_the_deepspeed_launcher(stage1, tmp_path):
    out = tmp_path / "crt"
    launch(stage1, out, "--method", "crt", "--epochs", "1", "--bn", "frozen", "--lr-schedule", "step", procs=2)
    before = torch.load(stage1 / "run" / "best_model.pt", weights_only=False)["state_dict"]
    after = torch.load(out / "best_model.pt", weights_only=False)["state_dict"]
    for name, value in bn_buffers(before).items():
        assert torch.equal(value, after[name].float()), name
    assert not torch.allclose(before["fc.weight"], after["fc.weight"].float())  # a re-initialised, trained head


def test_train_mode_follows_the_bn_setting_and_no_gradient_reaches_the_backbone():
    best = stage1_best()
    payload = {"state_dict": best["model"].state_dict(), **best["info"]}
    for bn, expect_training in (("update", True), ("frozen", False)):
        model = build_frozen_model(payload, "crt", bn, seed=0).train()
        norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert all(m.training == expect_training for m in norms)
        images = torch.randn(4, 3, 16, 16)
        model(images).sum().backward()
        assert all(p.grad is None for p in model.backbone.parameters())
        assert model.fc.weight.grad is not None


def test_lws_head_folds_into_the_same_linear_map():
    linear = torch.nn.Linear(6, 3)
    head = LWSHead(linear)
    with torch.no_grad():
        head.scales.copy_(torch.tensor([0.5, 2.0, 1.5]))
    features = torch.randn(5, 6)
    expected = (features.double() @ linear.weight.double().T + linear.bias.double()) * torch.tensor([0.5, 2.0, 1.5],
                                                                                                    dtype=torch.double)
    assert torch.allclose(head.folded()(features).double(), expected, atol=1e-5)
    assert torch.allclose(head(features).double(), expected, atol=1e-5)


def test_lws_refuses_a_cosine_stage1_head():
    from lt_dist.errors import UserInputError

    model = build_model("resnet10", 4, True, "cosine", 1.0)
    with pytest.raises(UserInputError, match="--method lws"):
        build_frozen_model({"state_dict": model.state_dict(), "arch": "resnet10", "num_classes": 4,
                            "small_input": True, "head": "cosine", "cosine_scale": 1.0}, "lws", "update", 0)


def test_epoch_cosine_schedule_is_constant_within_an_epoch():
    schedule = epoch_cosine_schedule(steps_per_epoch=3, epochs=4)
    expected = [0.5 * (1 + math.cos(math.pi * (step // 3) / 4)) for step in range(12)]
    assert np.allclose([schedule(step) for step in range(12)], expected)
    assert schedule(0) == 1.0 and schedule(2) == 1.0 and schedule(3) < 1.0


def test_as_classifier_is_the_trained_model():
    best = stage1_best()
    payload = {"state_dict": best["model"].state_dict(), **best["info"]}
    model = build_frozen_model(payload, "cosine", "update", seed=3).eval()
    assert isinstance(model, FrozenBackbone)
    images = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(images), model.as_classifier()(images))


def test_loader_settings_inherit_the_stage1_recipe(tmp_path):
    from lt_dist.engine.classifier import ClassifierConfig, loader_settings

    (tmp_path / "config.json").write_text(json.dumps({"train": {"train_preset": "inat_train", "no_jitter": True}}))
    best = {"arch": "resnet50", "small_input": False, "image_size": 192, "eval_preset": "inat_eval"}
    settings = loader_settings(ClassifierConfig(init=str(tmp_path), data="d", out="o", method="lws"), best)
    assert (settings.sampler, settings.epochs, settings.train_preset, settings.eval_preset, settings.image_size,
            settings.no_jitter, settings.arch) == ("class", 5, "inat_train", "inat_eval", 192, True, "resnet50")
    override = ClassifierConfig(init=str(tmp_path / "best_model.pt"), data="d", out="o", epochs=3,
                                train_preset="imagenet_train")
    assert (loader_settings(override, best).epochs, loader_settings(override, best).train_preset) == (3,
                                                                                                   "imagenet_train")


def test_a_cosine_stage2_model_reloads_as_extract_rebuilds_it(tmp_path):
    best = stage1_best()
    payload = {"state_dict": best["model"].state_dict(), **best["info"]}
    model = build_frozen_model(payload, "cosine", "update", seed=1).eval()
    save_best_model(str(tmp_path), model.as_classifier(), {})
    saved = torch.load(tmp_path / "best_model.pt", weights_only=False)["state_dict"]
    rebuilt = build_model("resnet10", len(COUNTS), True, "cosine", 16.0).eval()
    rebuilt.load_state_dict(saved)
    images = torch.randn(3, 3, 16, 16)
    assert torch.equal(rebuilt(images), model(images)) and float(saved["fc.scale"]) == 16.0
