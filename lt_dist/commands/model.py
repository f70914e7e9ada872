"""`lt_dist export`, `lt_dist evaluate`, `lt_dist predict`: the trained model as a product."""
from __future__ import annotations

import argparse

from lt_dist.errors import UserInputError
from lt_dist.optional import default_decoder, require
from lt_dist.storage.settings import add_storage_flags, export_storage_flags
from lt_dist.storage.urls import is_url


def add_parsers(subparsers) -> None:
    """Register export, evaluate and predict."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    export = subparsers.add_parser(
        "export", help="backbone + chosen stage-2 head as one model", formatter_class=fmt,
        description="Assemble the stage-1 backbone (best_model.pt) and a stage-2 head saved by the search "
        "(results/NAME/heads/METHOD.*) into one model: a torch state dict with its config (loadable with "
        "lt_dist.models.load_model), TorchScript, or ONNX with a dynamic batch axis.")
    export.add_argument("--run", dest="run_dir",
                        help="stage-1 run runs/NAME (default: the checkpoint the head's features came from)")
    export.add_argument("--results", required=True, help="results/NAME written by tune/search_stage2.py")
    export.add_argument("--method", required=True, help="stage-2 method whose chosen head to export (e.g. lws)")
    export.add_argument("--out", required=True, help="output folder, e.g. model/")
    export.add_argument("--format", action="append", dest="formats", choices=("torch", "torchscript", "onnx"),
                        help="repeatable (default: torch); torch is always written too")
    export.set_defaults(run=run_export)

    evaluate = subparsers.add_parser(
        "evaluate", help="Many/Medium/Few/All of an exported model on a packed split", formatter_class=fmt,
        description="Run an exported model (eval transform of its config) over every image of a packed split; "
        "print Many/Medium/Few/All top-1 (groups from the training counts) and write per-class accuracy.")
    evaluate.add_argument("model", help="folder written by `lt_dist export`")
    evaluate.add_argument("--data", required=True, help="packed dataset shards/NAME, or its URL (s3://, gs://, "
                          "http(s)://): shards are fetched into the node cache as they are read")
    evaluate.add_argument("--split", default="test", help="split to evaluate")
    evaluate.add_argument("--out", help="per-class CSV (default: MODEL/per_class_SPLIT.csv; metrics JSON beside it)")
    evaluate.add_argument("--decoder", choices=("dali", "torchvision"), default=default_decoder(),
                          help="image decoder (use the one extract used to reproduce the search exactly; "
                          "default: dali where it is installed, else torchvision)")
    evaluate.add_argument("--batch-size", type=int, default=256, help="images per batch")
    evaluate.add_argument("--workers", type=int, default=2, help="loader processes")
    add_storage_flags(evaluate)
    evaluate.set_defaults(run=run_evaluate)

    predict = subparsers.add_parser(
        "predict", help="top-k class names of images", formatter_class=fmt,
        description="Classify image files with an exported model: one CSV row per image with the top-k class "
        "names and probabilities. Images that cannot be read or decoded are reported by name and skipped.")
    predict.add_argument("model", help="folder written by `lt_dist export`")
    predict.add_argument("images", nargs="*", help="image files")
    predict.add_argument("--folder", help="every file under this folder (recursively, sorted)")
    predict.add_argument("--list", dest="list_file", help="text file with one image path per line")
    predict.add_argument("--top-k", type=int, default=5, help="classes per image")
    predict.add_argument("--out", help="CSV file (default: standard output)")
    predict.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    predict.add_argument("--decoder", choices=("torchvision", "dali"), default="torchvision",
                         help="image decoder (dali: on the GPU when there is one)")
    predict.set_defaults(run=run_predict)


def _load(path: str):
    """The exported model, on the GPU when there is one; a bad path is the user's mistake."""
    import torch

    from lt_dist.models.package import load_model

    try:
        model = load_model(path)
    except ValueError as error:
        raise UserInputError(str(error)) from None
    return model.to("cuda") if torch.cuda.is_available() else model


def _check_writable(path: str, flag: str, folder: bool = False) -> None:
    """A file's folder must exist (a folder output may be created, but not over a file)."""
    import os

    if folder and os.path.exists(path) and not os.path.isdir(path):
        raise UserInputError(f"{flag} {path!r} is a file, not a folder")
    parent = os.path.dirname(os.path.abspath(path))
    if not folder and not os.path.isdir(parent):
        raise UserInputError(f"{flag} {path!r}: folder {parent!r} does not exist")


def run_export(args) -> int:
    from lt_dist.engine.export import assemble, export_model

    _check_writable(args.out, "--out", folder=True)
    formats = ["torch"] + [f for f in dict.fromkeys(args.formats or []) if f != "torch"]
    model = assemble(args.run_dir, args.results, args.method)
    for fmt in formats:
        print(f"wrote {export_model(model, args.out, fmt)}")
    return 0


def run_evaluate(args) -> int:
    import json
    import os

    from lt_dist.engine.evaluate import evaluate_model, format_scores, write_per_class

    if args.batch_size < 1 or args.workers < 0:
        raise UserInputError(f"need --batch-size >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    if args.decoder == "dali":
        require("nvidia.dali", "--decoder dali")
    export_storage_flags(args)
    if args.out:
        _check_writable(args.out, "--out")
    model = _load(args.model)
    scores, per_class = evaluate_model(model, args.data, args.split, args.decoder, args.batch_size, args.workers)
    default_dir = args.model if os.path.isdir(args.model) else os.path.dirname(args.model)
    out = args.out or os.path.join(default_dir, f"per_class_{args.split}.csv")
    write_per_class(out, per_class, model.config)
    with open(os.path.splitext(out)[0] + ".json", "w", encoding="utf-8") as handle:
        data = args.data if is_url(args.data) else os.path.abspath(args.data)  # a URL stays as it was given
        json.dump({"split": args.split, "data": data, **scores}, handle, indent=1)
    print(format_scores(model.config["method"], args.split, scores))
    print(f"wrote {out}")
    return 0


def run_predict(args) -> int:
    import sys

    from lt_dist.engine.predict import collect_paths, predict_paths, write_predictions

    if args.top_k < 1 or args.batch_size < 1:
        raise UserInputError(f"--top-k and --batch-size must be >= 1, got {args.top_k} and {args.batch_size}")
    if args.decoder == "dali":
        require("nvidia.dali", "--decoder dali")
    paths = collect_paths(args.images, args.folder, args.list_file)
    if args.out:
        _check_writable(args.out, "--out")
    model = _load(args.model)
    rows, skipped = predict_paths(model, paths, min(args.top_k, model.config["num_classes"]), args.batch_size,
                                  args.decoder)
    for path, reason in skipped:
        print(f"lt_dist predict: skipped {path}: {reason}", file=sys.stderr)
    write_predictions(rows, args.out)
    if args.out:
        print(f"wrote {args.out}: {len(rows)} images, {len(skipped)} skipped")
    return 0 if rows or not skipped else 1
