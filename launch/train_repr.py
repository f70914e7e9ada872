r"""Stage 1 of decoupling: train the representation (and a joint classifier) with DeepSpeed.

    deepspeed [--num_gpus N | --hostfile launch/hostfile] launch/train_repr.py \
        --ds_config launch/ds.json --data shards/imagenet_lt --out runs/imagenet_lt
Also starts under `torchrun --nproc_per_node N` and as a plain single process.
Optimiser, batch sizes and precision come from ds.json; everything else from flags.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings

from lt_dist.config import TrainConfig, validate
from lt_dist.engine.ds import load_ds_config
from lt_dist.errors import OneLineArgumentParser, UserInputError
from lt_dist.optional import default_decoder
from lt_dist.storage.settings import add_storage_flags, export_storage_flags


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
    parser = OneLineArgumentParser(prog="train_repr", description=__doc__, add_help=add_help,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    arg = parser.add_argument
    arg("--ds_config", "--ds-config", dest="ds_config", default="launch/ds.json",
        help="DeepSpeed config: batch sizes, SGD, bf16, ZeRO (default: %(default)s)")
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
        "logit_adjusted (default: %(default)s)")
    arg("--loss-param", action="append", type=_loss_param, default=[], metavar="NAME=VALUE",
        help="loss parameter, repeatable: gamma=2, beta=0.9999, tau=1, drw=true, max_margin=0.5 ...")
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
    arg("--workers", type=int, default=defaults.workers, help="loader processes per rank (default: %(default)s)")
    arg("--ckpt-every", type=int, default=defaults.ckpt_every, help="also checkpoint every N optimizer steps")
    arg("--keep-checkpoints", type=int, default=defaults.keep_checkpoints, help="newest checkpoints kept")
    arg("--log-every", type=int, default=defaults.log_every, help="optimizer steps between log lines")
    arg("--eval-batch-size", type=int, default=defaults.eval_batch_size, help="per-rank batch for val/test")
    arg("--resume", action="store_true", help="continue from the newest checkpoint in OUT/checkpoints")
    arg("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # set by launchers
    add_storage_flags(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed flags."""
    return TrainConfig(data=args.data, out=args.out, arch=args.arch, small_input=args.small_input,
                       sampler=args.sampler, sampler_draw=args.sampler_draw, loss=args.loss,
                       loss_params=dict(args.loss_param), head=args.head, epochs=args.epochs, seed=args.seed,
                       train_preset=args.train_preset, eval_preset=args.eval_preset,
                       image_size=args.image_size, no_jitter=args.no_jitter, init_from=args.init_from,
                       decoder=args.decoder, workers=args.workers,
                       ckpt_every=args.ckpt_every, keep_checkpoints=args.keep_checkpoints,
                       log_every=args.log_every, resume=args.resume, eval_batch_size=args.eval_batch_size)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    # DeepSpeed 0.19's ZeRO calls a torch collective torch 2.14 marks deprecated, once per step
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated")
    config = config_from_args(args)
    try:  # numbers and ds.json first: a typo costs no start-up
        validate(config)
        load_ds_config(args.ds_config)
    except ValueError as error:  # UserInputError included
        print(f"train_repr: error: {error}", file=sys.stderr)
        return 2
    from lt_dist.engine.stage1 import run_stage1  # after parsing: --help stays fast

    try:
        export_storage_flags(args)  # the loader's worker processes read LT_DIST_* variables
        run_stage1(config, args.ds_config)
    except UserInputError as error:
        print(f"train_repr: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file that vanished or a full disk: name the path, no traceback
        print(f"train_repr: error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
