"""Benchmark the balanced loader: the decode floor, torchvision's ImageFolder, lt-dist, the interleaver.

Input: about 2,000 JPEGs (~500x375, quality 90) cut from scikit-learn's two sample
photographs, 20 long-tailed classes (bench/common.photo_folder), packed once with
`lt_dist pack` (cached in bench/data/). Every loader yields 224 px training batches of
RandomResizedCrop(224) + horizontal flip + normalisation (imagenet_train without its
colour jitter; the "+ jitter" rows add ColorJitter(0.4, 0.4, 0.4) to both sides).

    floor        decode + resize to 224x224 of one image at a time, images in RAM, one
                 core (torch/DALI on one thread); the best library times the cores
    ImageFolder  torchvision.datasets.ImageFolder + PIL transforms + DataLoader(workers 2)
    lt-dist      BalancedLoader, decoder "dali" (CPU) or "torchvision", instance and class
    interleaver  BalancedLoader, decoder "none" (manifest rows) or "bytes" (pread by offset)

Cases run in rounds (each case once per round, --repeats rounds) and the best round is
kept: the machine may be shared, and the "other load" column shows how busy the rest
of it was (cores). `--inat` runs the iNaturalist-scale memory / open-files check instead
(bench/loader_scale.py).

    python bench/loader.py [--repeats 3] [--epochs 2] [--no-jitter] | --inat [...]
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
import warnings
from typing import Callable, Iterable

import numpy as np
import torch

try:
    from bench.common import busy_jiffies, image_files, markdown_table, own_cpu, photo_folder, write_results
except ImportError:  # run as a script: python bench/loader.py
    from common import busy_jiffies, image_files, markdown_table, own_cpu, photo_folder, write_results

COLUMNS = ["group", "what", "workers", "images/s", "images/s (all)", "epoch restart ms", "CPU ms/img",
           "other load", "x of floor", "x of ImageFolder"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def measure(epochs: Callable[[], Iterable[Iterable]], warmup: int) -> dict:
    """Consume batches (x, labels) epoch by epoch; rates overall and after `warmup` batches,
    and how long the later epochs took to deliver their first batch (their restart cost)."""
    cpu, busy, started = own_cpu(), busy_jiffies(), time.perf_counter()
    count, steady_at, steady_count, batches, restarts = 0, None, 0, 0, []
    for index, epoch in enumerate(epochs()):
        epoch_start = time.perf_counter()
        for position, (_, labels) in enumerate(epoch):
            if position == 0 and index > 0:
                restarts.append(time.perf_counter() - epoch_start)
            count, batches = count + len(labels), batches + 1
            if batches == warmup:
                steady_at, steady_count = time.perf_counter(), count
    elapsed = time.perf_counter() - started
    cpu = own_cpu() - cpu
    other = (busy_jiffies() - busy) / os.sysconf("SC_CLK_TCK") - cpu
    steady = (count - steady_count) / (time.perf_counter() - steady_at) if steady_at else count / elapsed
    return {"images": count, "seconds": elapsed, "rate": steady, "rate_all": count / elapsed,
            "cpu_ms": 1e3 * cpu / count, "other_load": max(other, 0.0) / elapsed,
            "restart_ms": 1e3 * float(np.median(restarts)) if restarts else None}


def floor_cases(root: str, count: int) -> dict[str, Callable[[], dict]]:
    """One-core decode + resize to 224x224 loops, per library, over `count` JPEGs in RAM."""
    from PIL import Image
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as F

    data = [open(path, "rb").read() for path in image_files(root)[:count]]

    def loop(decode_resize: Callable[[bytes], object]) -> Callable[[], dict]:
        # one "batch" per image, so the first 8 images are the warm-up
        return lambda: measure(lambda: [((decode_resize(item), (0,)) for item in data)], warmup=8)

    def pil(item: bytes):
        return Image.open(io.BytesIO(item)).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)

    def tv_resize(image: torch.Tensor) -> torch.Tensor:  # (3, H, W) uint8, antialiased bilinear
        return F.resize(image, [224, 224], antialias=True)

    cases = {"PIL decode + PIL resize (bilinear)": loop(pil),
             "torchvision.io decode_jpeg + v2 resize": loop(
                 lambda item: tv_resize(decode_jpeg(torch.frombuffer(item, dtype=torch.uint8))))}
    try:
        import simplejpeg
        cases["simplejpeg decode + v2 resize"] = loop(
            lambda item: tv_resize(torch.from_numpy(simplejpeg.decode_jpeg(item)).permute(2, 0, 1)))
    except ImportError:
        print("simplejpeg not installed (pip install '.[bench]'): its floor row is skipped", file=sys.stderr)
    cases["DALI decoders.image + fn.resize"] = lambda: dali_floor(data)
    return cases


def dali_floor(data: list[bytes], batch: int = 64) -> dict:
    """DALI CPU decode + antialiased linear resize to 224x224, one thread, batches of 64."""
    from nvidia.dali import fn, pipeline_def, types

    arrays = [np.frombuffer(item, dtype=np.uint8) for item in data]
    batches = [arrays[i:i + batch] for i in range(0, len(arrays) - batch + 1, batch)]

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, seed=0)
    def pipeline():
        encoded = fn.external_source(source=lambda info: batches[info.iteration % len(batches)],
                                     batch=True, batch_info=True, dtype=types.UINT8)
        return fn.resize(fn.decoders.image(encoded, device="cpu", output_type=types.RGB),
                         resize_x=224, resize_y=224, interp_type=types.INTERP_LINEAR, antialias=True)

    pipe = pipeline()
    pipe.build()
    runs = max(len(batches), 4)
    return measure(lambda: [((pipe.run(), range(batch)) for _ in range(runs))], warmup=1)


def imagefolder_case(root: str, batch: int, workers: int, jitter: bool, epochs: int, warmup: int):
    """torchvision ImageFolder + PIL transforms + DataLoader: what users would otherwise run."""
    from torchvision import datasets, transforms

    steps = [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()]
    steps += [transforms.ColorJitter(0.4, 0.4, 0.4)] if jitter else []
    steps += [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    dataset = datasets.ImageFolder(root, transform=transforms.Compose(steps))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)
    return lambda: measure(lambda: (loader for _ in range(epochs)), warmup)


def ltdist_case(split_dir: str, batch: int, decoder: str, strategy: str, workers: int, jitter: bool,
                epochs: int, warmup: int):
    """lt-dist's BalancedLoader on the packed split (DALI on the CPU here)."""
    from lt_dist.data.loader import BalancedLoader, LoaderConfig
    from lt_dist.data.presets import get_preset
    from lt_dist.data.sampler import SamplerConfig
    from lt_dist.dist import World

    preset = get_preset("imagenet_train", color_jitter=0.4 if jitter else 0.0) if decoder in (
        "dali", "torchvision") else None
    config = LoaderConfig(split_dir, batch, preset, SamplerConfig(strategy, seed=0), decoder, workers)

    def run_epochs():  # one loader: each iteration is its next epoch (new order, new crops)
        loader = BalancedLoader(config, World())
        return (loader for _ in range(epochs))

    return lambda: measure(run_epochs, warmup)


def one_thread(case: Callable[[], dict]) -> Callable[[], dict]:
    """Run a case with one torch intra-op thread (the floor is per core)."""
    def run() -> dict:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return case()
        finally:
            torch.set_num_threads(threads)
    return run


def pack_photos(root: str) -> str:
    """Pack the photo folder with `lt_dist pack` (a finished pack is kept); returns the split dir."""
    out = os.path.join(os.path.dirname(root), "packed-" + os.path.basename(root))
    command = [sys.executable, "-m", "lt_dist.cli", "pack", root, "--out", out, "--workers", "2", "--no-progress"]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"bench/loader.py: {' '.join(command)} failed:\n{done.stderr}")
    return os.path.join(out, "train")


def build_cases(args: argparse.Namespace, root: str, split_dir: str) -> list[tuple[str, str, object, Callable]]:
    """(group, what, workers, run) for every timed configuration, in run order."""
    b, e, w = args.batch_size, args.epochs, args.warmup_batches
    cases = [("floor", name, "", one_thread(run)) for name, run in floor_cases(root, args.floor_images).items()]
    jitters = (False, True) if args.jitter else (False,)
    for jitter in jitters:
        tag = " + jitter" if jitter else ""
        cases.append(("ImageFolder", "ImageFolder + PIL transforms" + tag, 2,
                      imagefolder_case(root, b, 2, jitter, e, w)))
    for strategy in ("instance", "class"):
        for workers in (0, 2):
            cases.append(("lt-dist", f"dali, {strategy}", workers,
                          ltdist_case(split_dir, b, "dali", strategy, workers, False, e, w)))
    if args.jitter:
        cases.append(("lt-dist", "dali, instance + jitter", 0,
                      ltdist_case(split_dir, b, "dali", "instance", 0, True, e, w)))
    cases.append(("lt-dist", "torchvision, instance", 2,
                  ltdist_case(split_dir, b, "torchvision", "instance", 2, False, e, w)))
    for decoder, epochs in (("none", 100), ("bytes", 20)):
        for strategy in ("instance", "class"):
            cases.append(("interleaver", f"{decoder}, {strategy}", 0,
                          ltdist_case(split_dir, b, decoder, strategy, 0, False, epochs, 1)))
    return cases


def result_rows(cases: list, results: list[list[dict]]) -> tuple[list[dict], float]:
    """Best round per case, with ratios to the decode floor and to ImageFolder."""
    best = [max(runs, key=lambda r: r["rate"]) for runs in results]
    floor = max(r["rate"] for (group, *_), r in zip(cases, best) if group == "floor") * os.cpu_count()
    baseline = {"jitter" in what: r["rate"] for (group, what, *_), r in zip(cases, best) if group == "ImageFolder"}
    rows = []
    for (group, what, workers, _), result, runs in zip(cases, best, results):
        x_base = result["rate"] / baseline.get("jitter" in what, np.nan) if group in ("lt-dist", "ImageFolder") else None
        rows.append({"group": group, "what": what, "workers": workers, **result,
                     "x_floor": result["rate"] / floor, "x_imagefolder": x_base,
                     "all_rates": [r["rate"] for r in runs]})
    return rows, floor


def table_row(row: dict) -> list:
    """A result row as the table shows it."""
    x_base = "" if row["x_imagefolder"] is None else round(row["x_imagefolder"], 2)
    restart = "" if row["restart_ms"] is None or row["group"] == "interleaver" else round(row["restart_ms"])
    return [row["group"], row["what"], row["workers"], round(row["rate"]), round(row["rate_all"]), restart,
            round(row["cpu_ms"], 3), round(row["other_load"], 2), round(row["x_floor"], 2), x_base]


NOTES = [
    "images/s: the best of the rounds, counted after the first --warmup-batches batches (floor: "
    "the first 8 images); images/s (all) includes start-up (loader construction, worker start, DALI "
    "pipeline build) and every epoch boundary. Interleaver rows count samples (no decoding). epoch "
    "restart ms: from asking for an epoch to its first batch, median over epochs 2, 3, ...: worker "
    "start-up, DALI pipeline build and its first batches; paid once per epoch, so it weighs far more on "
    "these 2,000-image epochs than on a real one (ImageNet-LT: 115,846 images).",
    "floor rows: one image at a time on one core; x of floor there is per core. The decode floor is "
    "the best floor row times the number of cores. Interleaver rows: x of floor = samples/s over the "
    "decode floor (none: manifest rows only; bytes: plus a pread of each encoded image).",
    "lt-dist rows: the whole loader, sampler + pread by manifest offset + decode + augment, batches of "
    "float32 (N, 3, 224, 224). workers = DataLoader processes feeding encoded bytes (0: read in the "
    "main process); DALI runs 2 threads. x of ImageFolder compares like with like (jitter or not).",
    "CPU ms/img: CPU time of the benchmark process and its finished children per image (the cost "
    "on idle cores). other load: cores other processes kept busy during the run (a shared machine).",
    "jitter: ColorJitter(0.4, 0.4, 0.4) in torchvision (random order, contrast about the image's "
    "mean); in lt-dist DALI's colour twist (one fixed order, contrast about mid-grey), whose matrix "
    "the CPU path applies in torch after the resize.",
]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all cases (best kept)")
    parser.add_argument("--num-images", type=int, default=2000, help="JPEGs in the photo folder")
    parser.add_argument("--floor-images", type=int, default=512, help="images decoded per floor run")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per loader run")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch")
    parser.add_argument("--warmup-batches", type=int, default=3, help="batches left out of images/s")
    parser.add_argument("--no-jitter", dest="jitter", action="store_false", help="skip the colour-jitter rows")
    parser.add_argument("--inat", action="store_true",
                        help="run the iNaturalist-scale memory / open-files check instead "
                             "(options: python bench/loader_scale.py --help)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Build the inputs, run the cases in rounds, print the table, write bench/results/loader.json."""
    argv = sys.argv[1:] if argv is None else argv
    if "--inat" in argv:
        try:
            from bench import loader_scale
        except ImportError:
            import loader_scale
        return loader_scale.main([a for a in argv if a != "--inat"])
    args = get_args_parser().parse_args(argv)
    if args.repeats < 1 or args.epochs < 2 or args.num_images < 200:
        sys.exit("bench/loader.py: need --repeats >= 1, --epochs >= 2 and --num-images >= 200")
    warnings.filterwarnings("ignore", category=UserWarning)  # torchvision.io's deprecation notice
    root = photo_folder(args.num_images)
    split_dir = pack_photos(root)
    cases = build_cases(args, root, split_dir)
    results: list[list[dict]] = [[] for _ in cases]
    for round_index in range(args.repeats):
        for (group, what, workers, run), runs in zip(cases, results):
            print(f"round {round_index + 1}/{args.repeats}: {group}: {what} (workers {workers})",
                  file=sys.stderr, flush=True)
            runs.append(run())
    rows, floor = result_rows(cases, results)
    notes = NOTES + [f"decode floor: {floor:.0f} images/s ({os.cpu_count()} cores); photo folder {root}."]
    print(markdown_table(COLUMNS, [table_row(row) for row in rows]))
    print("\n" + "\n".join(f"- {note}" for note in notes), flush=True)
    path = write_results("loader", {"settings": vars(args), "photo_folder": root, "split_dir": split_dir,
                                    "decode_floor": floor, "rows": rows, "notes": notes})
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
