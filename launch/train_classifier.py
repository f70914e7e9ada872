r"""Stage 2 through the frozen backbone (the official protocol): cRT, LWS or the cosine classifier.

    deepspeed [--num_gpus N | --hostfile launch/hostfile] launch/train_classifier.py \
        --ds_config launch/ds_stage2.json --init runs/NAME --method crt \
        --data shards/NAME --out runs/NAME-crt
Every step decodes images with the training augmentation, draws class-balanced
batches and (--bn update, the default) re-estimates BatchNorm statistics on them.
The run writes best_model.pt in stage 1's layout: `lt_dist extract --ckpt runs/NAME-crt`
takes it like any stage-1 run. Also starts under torchrun and as a plain process.
The cheaper path, heads fitted on features extracted once, is tune/search_stage2.py.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from lt_dist.errors import UserInputError
from lt_dist.storage.settings import add_storage_flags, export_storage_flags


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Flags of stage 2 through the backbone; defaults are the official ImageNet-LT ones."""
    from lt_dist.engine.classifier import BN_MODES, LR_SCHEDULES, METHOD_EPOCHS, ClassifierConfig

    defaults = ClassifierConfig(init="", data="", out="")
    parser = argparse.ArgumentParser(description=__doc__, add_help=add_help,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    arg = parser.add_argument
    arg("--ds_config", "--ds-config", dest="ds_config", default="launch/ds_stage2.json",
        help="DeepSpeed config: batch 512, SGD lr 0.2, momentum 0.9, wd 5e-4 (default: %(default)s)")
    arg("--init", required=True, help="stage-1 run folder runs/NAME (or its best_model.pt)")
    arg("--data", required=True, help="packed dataset shards/NAME (or its URL) with train/ and val/ (test/ used once "
        "at the end)")
    arg("--out", required=True, help="run folder of this stage-2 run")
    arg("--method", default=defaults.method, choices=tuple(METHOD_EPOCHS),
        help="crt (new linear head), lws (per-class scales on the stage-1 head), cosine (default: %(default)s)")
    arg("--bn", default=defaults.bn, choices=BN_MODES,
        help="update: backbone BN in train() mode, statistics re-estimated on class-balanced batches "
        "(official); frozen: stage-1 statistics (default: %(default)s)")
    arg("--epochs", type=int, default=None, help="epochs of n samples (default: crt 10, lws 5, cosine 10)")
    arg("--lr-schedule", default=defaults.lr_schedule, choices=LR_SCHEDULES,
        help="cosine to 0 stepped once per epoch (official) or every optimizer step (default: %(default)s)")
    arg("--seed", type=int, default=defaults.seed, help="head init, sampling, augmentation (default: %(default)s)")
    arg("--train-preset", default=None, help="default: the stage-1 run's train preset")
    arg("--eval-preset", default=None, help="default: the stage-1 run's eval preset")
    arg("--image-size", type=int, default=None, help="default: the stage-1 run's crop size")
    arg("--decoder", default=defaults.decoder, choices=("dali", "torchvision"), help="(default: %(default)s)")
    arg("--workers", type=int, default=defaults.workers, help="loader processes per rank (default: %(default)s)")
    arg("--ckpt-every", type=int, default=defaults.ckpt_every, help="also checkpoint every N optimizer steps")
    arg("--keep-checkpoints", type=int, default=defaults.keep_checkpoints, help="newest checkpoints kept")
    arg("--log-every", type=int, default=defaults.log_every, help="optimizer steps between log lines")
    arg("--eval-batch-size", type=int, default=defaults.eval_batch_size, help="per-rank batch for val/test")
    arg("--resume", action="store_true", help="continue from the newest checkpoint in OUT/checkpoints")
    arg("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # set by launchers
    add_storage_flags(parser)  # --data may be s3://, gs://, http(s):// like every dataset address
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated")
    from lt_dist.engine.classifier import ClassifierConfig, run_classifier

    config = ClassifierConfig(
        init=args.init, data=args.data, out=args.out, method=args.method, bn=args.bn, epochs=args.epochs,
        lr_schedule=args.lr_schedule, seed=args.seed, train_preset=args.train_preset, eval_preset=args.eval_preset,
        image_size=args.image_size, decoder=args.decoder, workers=args.workers, ckpt_every=args.ckpt_every,
        keep_checkpoints=args.keep_checkpoints, log_every=args.log_every, resume=args.resume,
        eval_batch_size=args.eval_batch_size)
    try:
        export_storage_flags(args)  # the loader's worker processes read LT_DIST_* variables
        run_classifier(config, args.ds_config)
    except UserInputError as error:
        print(f"train_classifier: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
