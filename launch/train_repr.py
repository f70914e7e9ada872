r"""Stage 1 of decoupling: train the representation (and a joint classifier) with DeepSpeed.

    deepspeed [--num_gpus N | --hostfile launch/hostfile] launch/train_repr.py \
        --ds_config launch/ds.json --data shards/imagenet_lt --out runs/imagenet_lt
Also starts under `torchrun --nproc_per_node N` and as a plain single process.
Optimiser, batch sizes and precision come from ds.json; everything else from flags or
--config FILE (YAML/JSON; flags override; a run's config.json repeats it). Ctrl-C
checkpoints at the current step on every rank and exits 130 (again: at once).

losses and their --loss-param NAME=VALUE (defaults shown):
{losses}
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import warnings

from lt_dist.choices import check_names, default_workers, loss_help
from lt_dist.config import TrainConfig, validate
from lt_dist.config_file import parse_with_config, resolve_default_path
from lt_dist.engine.ds import load_ds_config
from lt_dist.errors import OneLineArgumentParser, UserInputError
from lt_dist.optional import default_decoder
from lt_dist.storage.settings import add_storage_flags, export_storage_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DS_CONFIG = "launch/ds.json"
EXIT_INTERRUPTED = 130  # engine.preempt.EXIT_INTERRUPTED; not imported from there, which would import torch
# config.json keys that record facts of a run rather than settings: accepted and skipped by --config
RECORDED_FACTS = ("world_size", "num_nodes", "ranks", "num_classes", "class_names", "train_counts", "command",
                  "git_commit")


def _loss_param(text: str) -> tuple[str, float | bool]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--loss-param takes NAME=VALUE, got {text!r}")
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--loss-param {name}: {value!r} is not a number or true/false") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"--loss-param {name}: {value!r} is not a finite number")
    return name, number


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Flags of stage 1 (reusable by wrappers); defaults from docs/METHOD.md for ImageNet-LT."""
    defaults = TrainConfig(data="", out="")
    parser = OneLineArgumentParser(prog="train_repr", description=__doc__.format(losses=loss_help()),
                                   add_help=add_help, formatter_class=argparse.RawDescriptionHelpFormatter)
    arg = parser.add_argument
    arg("--config", metavar="FILE", help="settings from a YAML/JSON file (keys: flag names); flags override; "
        "a run's config.json repeats it")
    arg("--ds_config", "--ds-config", dest="ds_config", default=DEFAULT_DS_CONFIG,
        help="DeepSpeed config: batch sizes, SGD, bf16, ZeRO (default: %(default)s, found from any folder)")
    arg("--data", required=True, help="packed dataset shards/NAME with train/ and val/ (test/ used once at the end); "
        "or its URL: s3://B/P/NAME, gs://..., http(s)://... (read through the node-local cache)")
    arg("--out", required=True, help="run folder runs/NAME: checkpoints/, log.jsonl, tb/, config.json, metrics")
    arg("--arch", default=defaults.arch, help="backbone: resnet10/18/50/101/152, resnext50/101/152_32x4d "
        "(default: %(default)s)")
    arg("--small-input", action="store_true", help="3x3 stem without max-pool for 28-32 px images")
    arg("--sampler", default=defaults.sampler, help="instance | class | sqrt | progressive | q in [0, 1] "
        "(default: %(default)s; the paper's best representation is instance-balanced)")
    arg("--sampler-draw", default=defaults.sampler_draw, choices=("stratified", "iid"),
        help="exact per-epoch class quotas or i.i.d. draws (default: %(default)s)")
    arg("--loss", default=defaults.loss, help="ce | focal | class_balanced | class_balanced_focal | ldam | "
        "logit_adjusted | balanced_softmax (default: %(default)s; parameters above)")
    arg("--loss-param", action="append", type=_loss_param, default=[], metavar="NAME=VALUE",
        help="a parameter of the loss, repeatable (the list above names each loss's)")
    arg("--mixup", type=float, default=defaults.mixup, metavar="ALPHA",
        help="mix pairs of each batch, lam ~ Beta(ALPHA, ALPHA), loss lam L(y_a) + (1 - lam) L(y_b) with the "
        "chosen --loss (MiSLAS: 0.2 on ImageNet-LT, 1.0 on CIFAR; default: %(default)s, off)")
    arg("--head", choices=("linear", "cosine"), default=None,
        help="classifier head: linear, or cosine (normalised features and weights); default: cosine "
        "for --loss ldam (as Cao et al.), linear otherwise")
    arg("--epochs", type=int, default=defaults.epochs, help="epochs of n samples (default: %(default)s)")
    arg("--seed", type=int, default=defaults.seed, help="model init, sampling, augmentation (default: %(default)s)")
    arg("--train-preset", default=defaults.train_preset,
        help="imagenet_train | inat_train | small_train (default: %(default)s; Places-LT: imagenet_*)")
    arg("--eval-preset", default=defaults.eval_preset, help="imagenet_eval | inat_eval | small_eval "
        "(default: %(default)s)")
    arg("--no-jitter", action="store_true", help="no colour jitter in the train preset")
    arg("--init-from", default=None, metavar="FILE",
        help="start the backbone from a state dict: a best_model.pt or a torchvision ResNet/ResNeXt "
        "state dict (its classifier is skipped); e.g. ImageNet-pretrained ResNet-152 for Places-LT")
    arg("--image-size", type=int, help="crop size of both presets (e.g. 28 for Fashion-MNIST)")
    arg("--decoder", default=default_decoder(), choices=("dali", "torchvision"),
        help="dali (GPU 'mixed' when CUDA is there, else CPU) or torchvision (nvJPEG in batches when CUDA "
        "is there, else PIL in the loader workers); default: dali where it is installed, else torchvision")
    arg("--workers", type=int, default=None, help="loader processes per rank (default: 0 for dali, which "
        "decodes in its own threads; for torchvision the node's CPUs per rank less one, at most 8; logged)")
    arg("--torch-threads", type=int, default=None, help="torch intra-op threads per rank (default: planned from "
        "the node's cores and its ranks, three quarters of each rank's share on a CPU, 1 on a GPU; logged)")
    arg("--dali-threads", type=int, default=None, help="DALI decode threads per rank (default: the rest of the "
        "rank's share of cores; logged)")
    arg("--ckpt-every", type=int, default=defaults.ckpt_every, help="also checkpoint every N optimizer steps "
        "(default: %(default)s, off)")
    arg("--ckpt-minutes", type=float, default=defaults.ckpt_minutes, help="also checkpoint when this many minutes "
        "passed since the last checkpoint, so a crash loses at most that (default: %(default)s; 0: off)")
    arg("--keep-checkpoints", type=int, default=defaults.keep_checkpoints, help="newest checkpoints kept")
    arg("--log-every", type=int, default=defaults.log_every, help="optimizer steps between log lines")
    arg("--no-progress", dest="progress", action="store_false", help="no progress bar (on a terminal) or "
        "periodic progress lines (elsewhere, every 30 s) from the main rank")
    arg("--verbose", action="store_true", help="keep DeepSpeed's and torch's start-up warnings")
    arg("--eval-batch-size", type=int, default=defaults.eval_batch_size, help="per-rank batch for val/test")
    arg("--resume", action="store_true", help="continue from the newest checkpoint in OUT/checkpoints")
    arg("--grace-seconds", type=float, default=defaults.grace_seconds,
        help="after SIGTERM/SIGINT every rank finishes its step, checkpoints and exits (0 after SIGTERM, 130 "
             "after Ctrl-C) within this many seconds, else exits 143 (default: %(default)s)")
    arg("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # set by launchers
    add_storage_flags(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed flags."""
    return TrainConfig(data=args.data, out=args.out, arch=args.arch, small_input=args.small_input,
                       sampler=args.sampler, sampler_draw=args.sampler_draw, loss=args.loss,
                       loss_params=dict(args.loss_param), head=args.head, mixup=args.mixup, epochs=args.epochs,
                       seed=args.seed,
                       train_preset=args.train_preset, eval_preset=args.eval_preset,
                       image_size=args.image_size, no_jitter=args.no_jitter, init_from=args.init_from,
                       decoder=args.decoder, workers=args.workers, torch_threads=args.torch_threads,
                       dali_threads=args.dali_threads,
                       ckpt_every=args.ckpt_every, ckpt_minutes=args.ckpt_minutes,
                       keep_checkpoints=args.keep_checkpoints, log_every=args.log_every, progress=args.progress,
                       resume=args.resume, eval_batch_size=args.eval_batch_size, grace_seconds=args.grace_seconds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags over --config FILE; a config.json's "train"/"deepspeed" sections are read as written."""
    parser = get_args_parser()
    args = parse_with_config(parser, argv, aliases={"loss_params": "loss_param", "deepspeed": "ds_config"},
                             ignored=RECORDED_FACTS, sections=("train",))
    args.ds_config = resolve_default_path(args.ds_config, DEFAULT_DS_CONFIG, REPO) if isinstance(
        args.ds_config, str) else args.ds_config
    return args


def _ds_config_file(value: str | dict) -> str:
    """A path for DeepSpeed's config: as given, or a resolved dict from a config.json written to a temp file."""
    if isinstance(value, str):
        return value
    handle = tempfile.NamedTemporaryFile("w", suffix=".json", prefix="ds_config_", delete=False)
    with handle:
        json.dump(value, handle)
    return handle.name


def finished_run(out: str, epochs: int) -> bool:
    """True when OUT already holds the test metrics of a run of `epochs` epochs."""
    try:
        with open(os.path.join(out, "config.json"), encoding="utf-8") as handle:
            recorded = json.load(handle)["train"]["epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return recorded == epochs and os.path.isfile(os.path.join(out, "test_metrics.json"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    is_main = os.environ.get("RANK", "0") == "0"
    try:  # names and loss parameters before the heavy imports: a typo costs well under a second
        check_names(args.arch, args.loss, dict(args.loss_param), args.sampler, (args.train_preset, args.eval_preset))
    except ValueError as error:
        print(f"train_repr: error: {error}", file=sys.stderr)
        return 2
    if args.resume and finished_run(args.out, args.epochs):
        if is_main:
            print(f"train_repr: {args.out} already finished its {args.epochs} epochs (test metrics in "
                  f"{os.path.join(args.out, 'test_metrics.json')}); nothing to resume")
        return 0
    if args.workers is None:
        args.workers, why = default_workers(args.decoder, ranks_on_node=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        if is_main:
            print(f"workers: {args.workers} loader processes per rank ({why}; --workers sets it)")
    try:  # numbers and ds.json before the heavy imports: a typo costs no start-up
        validate(config_from_args(args))
        if isinstance(args.ds_config, str):  # a config.json's resolved "deepspeed" section is taken as written
            load_ds_config(args.ds_config)
    except ValueError as error:  # UserInputError included
        print(f"train_repr: error: {error}", file=sys.stderr)
        return 2
    try:
        return _run(args, is_main)
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed (imports, start-up): nothing to keep
        print("train_repr: interrupted during start-up; nothing was trained, run the same command again",
              file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, is_main: bool) -> int:
    """Import the engine, train, and turn a pre-emption into its one line and exit code."""
    # DeepSpeed 0.19's ZeRO calls a torch collective torch 2.14 marks deprecated, once per step
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated")
    from lt_dist.quiet import quiet_startup

    quiet_startup(args.verbose)  # before DeepSpeed is imported: its import-time warnings are filtered too
    from lt_dist.engine.stage1 import run_stage1  # after parsing: --help stays fast

    ds_config = _ds_config_file(args.ds_config)
    try:
        export_storage_flags(args)  # the loader's worker processes read LT_DIST_* variables
        result = run_stage1(config_from_args(args), ds_config)
    except UserInputError as error:
        print(f"train_repr: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file that vanished or a full disk: name the path, no traceback
        print(f"train_repr: error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
    finally:
        if ds_config != args.ds_config:
            os.remove(ds_config)
    if "preempted" in result and result.get("signal") == "SIGINT":  # Ctrl-C: one line, from the main rank
        if is_main:
            print(f"train_repr: interrupted at step {result['step']}; checkpoint {result['preempted']} keeps the "
                  f"work; the same command with --resume continues", flush=True)
        return EXIT_INTERRUPTED
    if "preempted" in result:  # a checkpoint at an agreed step: exit 0 so the job can be requeued
        print(f"train_repr: pre-empted at step {result['step']}; checkpoint {result['preempted']}; "
              f"the same command with --resume continues", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
