"""Stage 2 through the frozen backbone, as the official code trains it (cRT, LWS, cosine).

    stage-1 best_model.pt -> backbone (no gradients) + new head -> class-balanced
    batches decoded with the TRAINING augmentation -> epochs: train -> val -> best
    model -> checkpoint -> test once on the best-on-val weights
With bn="update" (the official behaviour: every network is put in train() mode,
frozen or not) BatchNorm normalises with batch statistics while training and its
running statistics are re-estimated on class-balanced batches; they are what val,
test and `lt_dist extract` use afterwards. bn="frozen" keeps the stage-1 statistics
(backbone in eval() mode). The loader, DeepSpeed engine, checkpoints, resume, logs
and val/test protocol are stage 1's (engine.stage1, engine.loop).
best_model.pt has stage 1's layout (backbone.*, fc.*): LWS's scales are folded into
fc (f_j w_j, f_j b_j), so extract and the report read it like any stage-1 run.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lt_dist.config import TrainConfig, dump, to_dict
from lt_dist.dist import World, process_group_closed_at_exit
from lt_dist.engine import checkpoint as ckpt
from lt_dist.engine import ds
from lt_dist.engine.logs import RunLogger
from lt_dist.engine.loop import evaluate, train_one_epoch
from lt_dist.engine.reports import append_per_class, write_test_results
from lt_dist.engine.stage1 import build_loaders, check_inputs
from lt_dist.errors import UserInputError
from lt_dist.losses import CrossEntropy
from lt_dist.models.cosine import CosineHead
from lt_dist.models.resnet import Classifier, build_model

# Official ImageNet-LT configs: cRT 10 epochs, LWS 5; the cosine classifier as cRT.
METHOD_EPOCHS = {"crt": 10, "lws": 5, "cosine": 10}
BN_MODES = ("update", "frozen")
COSINE_SCALE = 16.0  # the official CosNorm classifier's fixed scale
LR_SCHEDULES = ("epoch", "step")


@dataclass(frozen=True)
class ClassifierConfig:
    """A stage-2 run through the frozen backbone."""

    init: str  # stage-1 run folder runs/NAME or its best_model.pt
    data: str  # packed dataset shards/NAME with train/ and val/ (test/ optional)
    out: str  # run folder of this stage-2 run
    method: str = "crt"  # crt | lws | cosine
    bn: str = "update"  # update: BN in train() mode, statistics re-estimated (official); frozen: eval() mode
    epochs: int | None = None  # None: METHOD_EPOCHS[method]
    lr_schedule: str = "epoch"  # cosine to 0 stepped per epoch (official) or per optimizer step
    seed: int = 0  # head init, sampling and augmentation
    train_preset: str | None = None  # None: the stage-1 run's train preset (imagenet_train if unknown)
    eval_preset: str | None = None  # None: the stage-1 run's eval preset
    image_size: int | None = None  # None: the stage-1 run's crop size
    decoder: str = "dali"  # "dali" | "torchvision"
    workers: int = 2  # DataLoader workers per rank
    ckpt_every: int = 0  # also checkpoint every this many optimizer steps
    keep_checkpoints: int = 2  # newest checkpoints kept
    log_every: int = 20  # optimizer steps between log lines
    resume: bool = False  # continue from the newest checkpoint in out/checkpoints
    eval_batch_size: int = 256  # per rank, for val/test


class LWSHead(nn.Module):
    """logits = f_j * (w_j . x + b_j): the stage-1 linear head frozen, one learned scale per class (start 1)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear.requires_grad_(False)
        self.scales = nn.Parameter(torch.ones(linear.out_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C)."""
        return self.linear(features) * self.scales

    def folded(self) -> nn.Linear:
        """The equivalent nn.Linear: rows f_j w_j, bias f_j b_j."""
        folded = nn.Linear(self.linear.in_features, self.linear.out_features)
        with torch.no_grad():
            folded.weight.copy_(self.linear.weight * self.scales[:, None])
            folded.bias.copy_(self.linear.bias * self.scales)
        return folded


class FrozenBackbone(nn.Module):
    """A stage-1 backbone without gradients and a trainable head; train() obeys the BN mode."""

    def __init__(self, backbone: nn.Module, head: nn.Module, feature_dim: int, bn_update: bool):
        super().__init__()
        self.backbone, self.fc = backbone.requires_grad_(False), head
        self.feature_dim, self.bn_update = feature_dim, bn_update

    def train(self, mode: bool = True) -> "FrozenBackbone":
        """train(True) leaves the backbone in eval() mode unless BN statistics are to be re-estimated."""
        super().train(mode)
        if mode and not self.bn_update:
            self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C); no autograd graph through the backbone (its running stats still move)."""
        with torch.no_grad():
            features = self.backbone(images)
        return self.fc(features)

    def as_classifier(self) -> Classifier:
        """A Classifier in stage 1's layout sharing this backbone (LWS folded into a plain linear fc)."""
        head = self.fc.folded() if isinstance(self.fc, LWSHead) else self.fc
        return Classifier(self.backbone, self.feature_dim, head.out_features, head)


def build_frozen_model(best: dict, method: str, bn: str, seed: int) -> FrozenBackbone:
    """The stage-1 model of best_model.pt with the head `method` trains.

    crt: a fresh nn.Linear; cosine: a fresh CosineHead, scale fixed at 16 (official);
    lws: the stage-1 linear head frozen, scaled per class. LWS needs W and b, so a
    cosine stage-1 head is refused for it (use --method cosine or crt).
    """
    stage1_head = best.get("head", "linear")
    if method == "lws" and stage1_head != "linear":
        raise UserInputError(f"--method lws scales a linear stage-1 head; {best.get('path', 'the stage-1 run')} "
                             f"has a {stage1_head} head (use --method crt or cosine)")
    model = build_model(best["arch"], best["num_classes"], best["small_input"], stage1_head, best.get("cosine_scale"))
    model.load_state_dict(best["state_dict"])
    torch.manual_seed(seed)  # the new head's initialisation
    dim, num_classes = model.feature_dim, best["num_classes"]
    heads = {"crt": lambda: nn.Linear(dim, num_classes), "lws": lambda: LWSHead(model.fc),
             "cosine": lambda: CosineHead(dim, num_classes, COSINE_SCALE)}
    return FrozenBackbone(model.backbone, heads[method](), dim, bn == "update")


def _check(config: ClassifierConfig) -> None:
    """Raise UserInputError naming the first bad flag."""
    checks = [(config.method in METHOD_EPOCHS, f"--method {config.method!r}: choose one of {', '.join(METHOD_EPOCHS)}"),
              (config.bn in BN_MODES, f"--bn {config.bn!r}: choose update or frozen"),
              (config.lr_schedule in LR_SCHEDULES, f"--lr-schedule {config.lr_schedule!r}: choose epoch or step"),
              (config.epochs is None or config.epochs >= 1, f"--epochs must be >= 1, got {config.epochs}")]
    for ok, message in checks:
        if not ok:
            raise UserInputError(message)


def stage1_settings(init: str) -> dict:
    """The stage-1 run's train settings from its config.json ({} when only a best_model.pt is given)."""
    folder = os.path.dirname(init) if init.endswith(".pt") else init
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle).get("train", {})


def loader_settings(config: ClassifierConfig, best: dict) -> TrainConfig:
    """Stage 1's run settings for this run's loaders and checkpoints: class-balanced sampling,
    presets, crop size and --no-jitter inherited from the stage-1 run unless given."""
    before = stage1_settings(config.init)
    image_size = config.image_size if config.image_size is not None else best.get("image_size")
    return TrainConfig(data=config.data, out=config.out, arch=best["arch"], small_input=best["small_input"],
                       sampler="class", epochs=config.epochs or METHOD_EPOCHS[config.method], seed=config.seed,
                       train_preset=config.train_preset or before.get("train_preset", "imagenet_train"),
                       eval_preset=config.eval_preset or best.get("eval_preset", "imagenet_eval"),
                       image_size=image_size, no_jitter=bool(before.get("no_jitter", False)),
                       decoder=config.decoder, workers=config.workers,
                       ckpt_every=config.ckpt_every, keep_checkpoints=config.keep_checkpoints,
                       log_every=config.log_every, resume=config.resume, eval_batch_size=config.eval_batch_size)


def run_classifier(config: ClassifierConfig, ds_config_path: str) -> dict:
    """Train the head, validate every epoch, test once; returns the test (else val) metrics."""
    _check(config)
    world = World.from_env()
    best = ckpt.load_best_model(config.init)
    settings = loader_settings(config, best)
    ds_config, facts = check_inputs(settings, ds_config_path, world)
    if len(facts["counts"]) != best["num_classes"]:
        raise UserInputError(f"{config.data!r} has {len(facts['counts'])} classes, {config.init!r} "
                             f"{best['num_classes']}")
    model = build_frozen_model(best, config.method, config.bn, config.seed)
    ds.init_distributed()
    with process_group_closed_at_exit():
        return _train_and_test(config, settings, model, best, ds_config, facts, world)


def _train_and_test(config: ClassifierConfig, settings: TrainConfig, model: FrozenBackbone, best_stage1: dict,
                    ds_config: dict, facts: dict, world: World) -> dict:
    """Epochs of class-balanced training through the frozen backbone, then the final test."""
    say = print if world.is_main else (lambda *a, **k: None)
    micro, gas = ds_config["train_micro_batch_size_per_gpu"], ds_config["gradient_accumulation_steps"]
    counts, num_classes = facts["counts"], len(facts["counts"])
    train_loader, val_loader, test_loader = build_loaders(settings, facts, world, micro)
    steps_per_epoch = len(train_loader) // gas
    schedule = (ds.epoch_cosine_schedule(steps_per_epoch, settings.epochs) if config.lr_schedule == "epoch"
                else ds.cosine_schedule(settings.epochs * steps_per_epoch))
    engine = ds.initialize(model, ds_config, total_steps=settings.epochs * steps_per_epoch, log=say, schedule=schedule)
    loss_fn = CrossEntropy(counts).to(engine.device)
    ckpt_dir = os.path.join(config.out, "checkpoints")
    best = {"val_all": -1.0, "epoch": None}
    if config.resume:
        client = ds.load_checkpoint(engine, ckpt_dir)
        if client is None:
            raise UserInputError(f"--resume: no checkpoint found in {ckpt_dir!r}")
        train_loader.load_state_dict(client["loader"])
        best = client["best"]
        say(f"resumed from {ckpt_dir} at epoch {train_loader.epoch}, batch {train_loader.batches_done}")
    logger = RunLogger(config.out, world.is_main)
    info = {"arch": best_stage1["arch"], "num_classes": num_classes, "small_input": best_stage1["small_input"],
            "train_counts": counts.tolist(), "class_names": facts["class_names"],
            "eval_preset": settings.eval_preset, "image_size": settings.image_size,
            "head": "cosine" if config.method == "cosine" else "linear",
            "cosine_scale": COSINE_SCALE if config.method == "cosine" else None,
            "stage2": {"method": config.method, "bn": config.bn, "init": config.init}}
    if world.is_main:
        dump(settings, os.path.join(config.out, "config.json"),
             {"stage2": dataclasses.asdict(config), "deepspeed": ds_config, "world_size": world.world_size,
              "num_classes": num_classes, "class_names": facts["class_names"], "train_counts": counts.tolist()})

    def save(end_of_epoch: bool) -> None:
        epoch = train_loader.epoch - (1 if end_of_epoch else 0)
        ds.save_checkpoint(engine, ckpt_dir, ckpt.checkpoint_tag(engine.global_steps, epoch, end_of_epoch), {
            "epoch": epoch, "global_step": engine.global_steps, "loader": train_loader.state_dict(),
            "best": best, "config": to_dict(settings)})
        if world.is_main:
            ckpt.prune_checkpoints(ckpt_dir, settings.keep_checkpoints)

    def on_step() -> None:
        if settings.ckpt_every and engine.global_steps % settings.ckpt_every == 0:
            save(end_of_epoch=False)

    for epoch in range(train_loader.epoch, settings.epochs):
        train_loader.set_epoch(epoch)
        summary = train_one_epoch(engine, train_loader, loss_fn, epoch=epoch, num_epochs=settings.epochs,
                                  log_every=settings.log_every, show_progress=world.is_main, on_step=on_step,
                                  on_log=lambda values: logger.log("train", engine.global_steps, **values))
        metrics = evaluate(engine.module, val_loader, num_classes, counts, engine.device)
        scores = {key: metrics[key] for key in ("all", "many", "medium", "few")}
        logger.log("epoch", engine.global_steps, **summary, lr=ds.current_lr(engine),
                   **{f"val_{k}": v for k, v in scores.items()})
        say(f"epoch {epoch}: loss {summary['loss']:.4f}, val all {scores['all']:.2f} many {scores['many']:.2f} "
            f"medium {scores['medium']:.2f} few {scores['few']:.2f}")
        if world.is_main:
            append_per_class(os.path.join(config.out, "val_per_class.csv"), epoch, metrics, counts,
                             facts["class_names"])
        if scores["all"] > best["val_all"]:  # the official loop keeps the best-on-val epoch too
            best = {"val_all": scores["all"], "epoch": epoch, "val": scores}
            if world.is_main:
                ckpt.save_best_model(config.out, engine.module.as_classifier(), {**info, "epoch": epoch, "val": scores})
        save(end_of_epoch=True)
    result = _final_test(config, engine.device, test_loader or val_loader, counts, facts, world, best)
    logger.close()
    return result


def _final_test(config: ClassifierConfig, device, loader, counts, facts: dict, world: World, best: dict) -> dict:
    """Rebuild the best-on-val model from best_model.pt (as extract will) and evaluate it once."""
    dist.barrier()
    saved = ckpt.load_best_model(config.out)
    model = build_model(saved["arch"], saved["num_classes"], saved["small_input"], saved["head"], saved["cosine_scale"])
    model.load_state_dict(saved["state_dict"])
    model.to(device)
    metrics = evaluate(model, loader, len(counts), counts, device)
    scores = {key: metrics[key] for key in ("all", "many", "medium", "few")}
    split = "test" if facts["test_dir"] else "val"
    if world.is_main:
        write_test_results(config.out, split, metrics, counts, facts["class_names"], best)
        print(f"{split} (best-on-val epoch {best['epoch']}): all {scores['all']:.2f} many {scores['many']:.2f} "
              f"medium {scores['medium']:.2f} few {scores['few']:.2f}")
    return scores
