"""Run settings of stage 1 as one frozen dataclass: load, validate, dump.

Every field carries a one-line comment; defaults follow docs/METHOD.md (ImageNet-LT).
The optimiser, batch sizes and precision live in the DeepSpeed config (ds.json),
never here, so the two cannot disagree.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainConfig:
    """Stage-1 training run."""

    data: str  # packed dataset shards/NAME with train/ and val/ (test/ optional)
    out: str  # run folder runs/NAME: checkpoints, logs, config, metrics
    arch: str = "resnext152_32x4d"  # models.resnet.MODELS name
    small_input: bool = False  # 3x3 stem without max-pool, for 28-32 px images
    sampler: str = "instance"  # balance.BALANCERS name or a number q in [0, 1]
    sampler_draw: str = "stratified"  # exact per-epoch class quotas or "iid"
    loss: str = "ce"  # losses.LOSSES name
    loss_params: dict = field(default_factory=dict)  # keyword arguments of the loss
    head: str | None = None  # "linear" | "cosine"; None: cosine for ldam (Cao et al.), else linear
    mixup: float = 0.0  # mixup alpha: pairs mixed with lam ~ Beta(alpha, alpha) (MiSLAS: 0.2 ImageNet-LT); 0: off
    epochs: int = 90  # passes of n samples each (n = training-set size)
    seed: int = 0  # model init, sampling and augmentation
    train_preset: str = "imagenet_train"  # presets.PRESETS name for training
    eval_preset: str = "imagenet_eval"  # presets.PRESETS name for val/test
    image_size: int | None = None  # crop size override of both presets
    no_jitter: bool = False  # switch the train preset's colour jitter off (the official iNaturalist recipe)
    init_from: str | None = None  # state dict to start the backbone from (best_model.pt or torchvision format)
    decoder: str = "dali"  # "dali" | "torchvision"
    workers: int = 2  # DataLoader workers per rank
    torch_threads: int | None = None  # intra-op threads per rank; None: cpu_budget.plan_cpus
    dali_threads: int | None = None  # DALI decode threads per rank; None: cpu_budget.plan_cpus
    ckpt_every: int = 0  # also checkpoint every this many optimizer steps (0: per epoch only)
    ckpt_minutes: float = 30.0  # also checkpoint when this much wall time passed since the last one (0: never)
    keep_checkpoints: int = 2  # newest checkpoints kept (the best model is kept apart)
    log_every: int = 20  # optimizer steps between log lines
    progress: bool = True  # main rank: a bar on a terminal, a line every 30 s otherwise
    resume: bool = False  # continue from the newest checkpoint in out/checkpoints
    eval_batch_size: int = 256  # per rank, for val/test
    grace_seconds: float = 60.0  # after SIGTERM/SIGINT: checkpoint and exit within this, else exit 143


# Upper bounds of user-given sizes: beyond them a value is a typo, and honouring it would
# allocate memory, processes or time in proportion to the number before anything else fails.
BOUNDS = {"epochs": (1, 10_000), "seed": (0, 2**32 - 1), "workers": (0, 64), "ckpt_every": (0, 10**9),
          "keep_checkpoints": (1, 1000), "log_every": (1, 10**9), "eval_batch_size": (1, 65_536),
          "image_size": (8, 4096)}


def check_int(name: str, value, low: int, high: int) -> None:
    """Raise ValueError naming `name` unless value is an int (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number in [{low}, {high}], got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def validate(config: TrainConfig) -> None:
    """Raise ValueError naming the first bad field (names of tables are checked where they live)."""
    for name, (low, high) in BOUNDS.items():
        value = getattr(config, name)
        if not (name == "image_size" and value is None):
            check_int(name, value, low, high)
    for name in ("torch_threads", "dali_threads"):
        if getattr(config, name) is not None:
            check_int(name, getattr(config, name), 1, 1024)
    if config.decoder not in ("dali", "torchvision"):
        raise ValueError(f"unknown decoder {config.decoder!r}; choose dali or torchvision")
    if config.head not in (None, "linear", "cosine"):
        raise ValueError(f"unknown head {config.head!r}; choose linear or cosine")
    # LDAM's margins (up to 0.5) are defined on cosines in [-1, 1]; on raw logits they are not LDAM
    if config.loss == "ldam" and config.head == "linear":
        raise ValueError("--loss ldam needs the cosine head: --head linear cannot be combined with --loss ldam")
    for name, value in config.loss_params.items():
        if not isinstance(value, (bool, int, float)) or value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"loss parameter {name}={value!r} must be a finite number or true/false")
    if isinstance(config.mixup, bool) or not isinstance(config.mixup, (int, float)) or not 0 <= config.mixup <= 10:
        raise ValueError(f"mixup must be a number in [0, 10] (alpha of Beta(alpha, alpha); 0: off), "
                         f"got {config.mixup!r}")
    if not 0 <= config.ckpt_minutes <= 10080:  # NaN fails this too
        raise ValueError(f"ckpt_minutes must be in [0, 10080], got {config.ckpt_minutes}")
    if not 0 < config.grace_seconds <= 86400:
        raise ValueError(f"grace_seconds must be in (0, 86400], got {config.grace_seconds}")


def resolve_head(config: TrainConfig) -> tuple[str, float | None]:
    """(head, cosine_scale) of the stage-1 model: LDAM gets a cosine head of scale 1 (its loss
    multiplies by s = 30); another loss on a cosine head gets the fixed scale 16 of the official
    cosine classifier. A linear head has no scale (None)."""
    head = config.head or ("cosine" if config.loss == "ldam" else "linear")
    if head != "cosine":
        return head, None
    return head, 1.0 if config.loss == "ldam" else 16.0


def to_dict(config: TrainConfig) -> dict:
    """JSON-ready dict of the config."""
    return dataclasses.asdict(config)


def from_dict(values: dict) -> TrainConfig:
    """TrainConfig from a dict; unknown keys are an error naming them."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
    return TrainConfig(**values)


def dump(config: TrainConfig, path: str, extra: dict | None = None) -> None:
    """Write the config (plus resolved extras such as the DeepSpeed config) as JSON."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"train": to_dict(config), **(extra or {})}, handle, indent=1)
        handle.write("\n")
