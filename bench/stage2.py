"""Benchmark stage 2 on ImageNet-LT-sized synthetic features: seconds per method, the tau sweep
against its matmul floor, and Ray Tune's parallel speed-up over the same trials run one after another.

Features: Gaussian blobs in a random --latent-dim subspace of --dim (real features are far from
isotropic; in 2048 isotropic dimensions a 5-image class mean is mostly noise), centres N(0, 1) *
snr / sqrt(latent), noise N(0, 1) there plus N(0, 0.1^2) in every dimension (full rank). Train rows
at the real ImageNet-LT class counts, val 20 and test 50 per class, times --scale (at least 1 per
class). The stage-1 classifier is head-biased like a jointly trained one: w_j = centre_j *
(n_j / n_max)^0.15, b_j = 0.1 log(n_j / n). Cached under bench/data/ (git-ignored).

    python bench/stage2.py [--scale 1.0] [--dim 2048] [--epochs-scale 1.0] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import timeit

import numpy as np

try:
    from bench.common import DATA_DIR, markdown_table, write_results
except ImportError:  # run as a script: python bench/stage2.py
    from common import DATA_DIR, markdown_table, write_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTS = os.path.join(REPO, "..", "shared", "data", "lt-splits", "ImageNet_LT_train_class_counts.json")
TRAINED = ("crt", "lws", "learned_tau", "cosine", "balanced_softmax", "label_aware_smoothing", "wb",
           "disalign")  # methods with epochs
TAUS = [round(0.1 * i, 1) for i in range(21)]  # the official grid 0.0 .. 2.0
EVAL_PER_CLASS = {"val": 20, "test": 50}
CHUNK = 16384  # rows generated at once
HEAD_POWER, PRIOR_WEIGHT, ISOTROPIC = 0.15, 0.1, 0.1  # stage-1 classifier bias; full-rank noise


def split_counts(train_counts: list[int], scale: float) -> dict[str, np.ndarray]:
    """Rows per class of each split: the train counts and 20 / 50 per class, times scale, floored at 1."""
    per_class = {"train": np.asarray(train_counts, dtype=np.float64)}
    per_class.update({split: np.full(len(train_counts), float(n)) for split, n in EVAL_PER_CLASS.items()})
    return {split: np.maximum(np.floor(n * scale), 1).astype(np.int64) for split, n in per_class.items()}


def blobs(rng: np.random.Generator, centres: np.ndarray, basis: np.ndarray,
          counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,) shuffled, features (N, D) float32 = (latent centre + N(0, 1)) @ basis + N(0, 0.1^2))."""
    labels = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    features = np.empty((len(labels), basis.shape[1]), dtype=np.float32)
    for start in range(0, len(labels), CHUNK):
        block, rows = features[start:start + CHUNK], labels[start:start + CHUNK]
        block[:] = rng.standard_normal(block.shape, dtype=np.float32)
        block *= np.float32(ISOTROPIC)
        block += (centres[rows] + rng.standard_normal((len(rows), len(basis)), dtype=np.float32)) @ basis
    return labels, features


def feature_folder(scale: float, dim: int, latent: int, seed: int, snr: float) -> str:
    """The cached features folder (train/val/test.arrow, classifier.arrow, features.json); built if missing.

    Built under a temporary name and renamed when complete, so an existing folder is always whole.
    """
    folder = os.path.join(DATA_DIR, f"stage2-features-{scale:g}-d{dim}-l{latent}-snr{snr:g}-seed{seed}")
    if os.path.isdir(folder):
        return folder
    from lt_dist.stage2.store import write_classifier, write_index, write_split

    with open(COUNTS, encoding="utf-8") as handle:
        counts = split_counts(json.load(handle), scale)
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, latent)))[0].T.astype(np.float32)  # (latent, D) orthonormal
    centres = rng.standard_normal((len(counts["train"]), latent), dtype=np.float32) * np.float32(snr / latent ** 0.5)
    temp = folder + ".tmp"
    shutil.rmtree(temp, ignore_errors=True)  # left by an interrupted run
    os.makedirs(temp)
    for split, rows in counts.items():
        labels, features = blobs(rng, centres, basis, rows)
        write_split(os.path.join(temp, f"{split}.arrow"), np.arange(len(labels)),
                    [f"{split}/{i:07d}" for i in range(len(labels))], labels, features)
        del features
    train = counts["train"]
    weight = (centres @ basis) * ((train / train.max()) ** HEAD_POWER).astype(np.float32)[:, None]
    write_classifier(temp, weight, PRIOR_WEIGHT * np.log(train / train.sum()), train,
                     [f"class{j:04d}" for j in range(len(train))])
    write_index(temp, {"synthetic": True, "scale": scale, "dim": dim, "latent_dim": latent, "seed": seed,
                       "snr": snr, "rows": {split: int(n.sum()) for split, n in counts.items()}})
    os.replace(temp, folder)
    return folder


def method_params(method: str, epochs_scale: float) -> dict:
    """DEFAULT_PARAMS of the method (as {}), with epochs times epochs_scale (>= 1) for the trained ones."""
    from lt_dist.stage2.methods import DEFAULT_PARAMS

    if method not in TRAINED or epochs_scale == 1:
        return {}
    return {"epochs": max(1, round(DEFAULT_PARAMS[method]["epochs"] * epochs_scale))}


def run_trials(folder: str, trials: list[dict]) -> tuple[float, list[dict]]:
    """(wall seconds, results) of run_trial for each {"method", "params"} in turn, in this process."""
    from lt_dist.stage2.search import run_trial

    started = time.perf_counter()
    results = [run_trial(folder, t["method"], t["params"], 0, "val") for t in trials]
    return time.perf_counter() - started, results


def per_method(folder: str, epochs_scale: float) -> list[dict]:
    """Seconds of one trial (fit on train, score val) of every method in METHODS with its defaults."""
    from lt_dist.stage2.methods import DEFAULT_PARAMS, METHODS

    rows = []
    for method in METHODS:
        params = method_params(method, epochs_scale)
        seconds, (result,) = run_trials(folder, [{"method": method, "params": params}])
        epochs = params.get("epochs", DEFAULT_PARAMS[method].get("epochs"))
        rows.append({"method": method, "params": params, "epochs": epochs, "seconds": seconds,
                     "val_all": result["val_all"], "val_few": result["val_few"]})
    return rows


def matmul_seconds(folder: str, repeats: int = 3) -> tuple[float, float]:
    """(best seconds, GFLOP/s) of the sweep's main product, val features (N, D) @ W^T (D, C), float32 numpy."""
    from lt_dist.stage2.store import load_features

    splits, classifier = load_features(folder, ("train", "val"))
    features, weight = np.asarray(splits["val"].features, dtype=np.float32), classifier["weight"]
    best = min(timeit.repeat(lambda: features @ weight.T, number=1, repeat=repeats))  # as LinearPredictor
    (rows, dim), classes = features.shape, weight.shape[0]
    return best, 2.0 * rows * dim * classes / best / 1e9


def tau_sweep(folder: str) -> dict:
    """The 21-tau sweep as run_trial calls against its floor: 21 products at the measured matmul rate."""
    product, gflops = matmul_seconds(folder)
    seconds, results = run_trials(folder, [{"method": "tau_norm", "params": {"tau": tau}} for tau in TAUS])
    best = max(results, key=lambda result: result["val_all"])
    floor = len(TAUS) * product
    return {"taus": len(TAUS), "seconds": seconds, "matmul_seconds": product, "matmul_gflops": gflops,
            "floor_seconds": floor, "x_floor": seconds / floor, "best_tau": json.loads(best["params"])["tau"],
            "best_val_all": best["val_all"]}


def ray_set(epochs_scale: float) -> list[dict]:
    """The trials timed both ways: cRT and LWS (longest first), NCM l2/cos, joint, the 21 taus."""
    trials = [{"method": m, "params": method_params(m, epochs_scale)} for m in ("crt", "lws")]
    trials += [{"method": "ncm", "params": {"metric": metric}} for metric in ("l2", "cos")]
    trials.append({"method": "joint", "params": {}})
    return trials + [{"method": "tau_norm", "params": {"tau": tau}} for tau in TAUS]


def ray_search(folder: str, trials: list[dict], num_cpus: int) -> dict:
    """Run the trials through tune/search_stage2.py's run_search in a fresh Python (this file's --ray-driver).

    Returns {"wall_seconds" (process start to exit: imports, Ray start-up and shutdown included),
    "search_seconds" (run_search itself), "trials", "trial_seconds" (sum of the trials' own seconds)}.
    """
    out = tempfile.mkdtemp(prefix="lt_dist-bench-stage2-")
    try:
        with open(os.path.join(out, "trials.json"), "w", encoding="utf-8") as handle:
            json.dump(trials, handle)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.join(REPO, "tune"), REPO,
                                                                         os.environ.get("PYTHONPATH")]))}
        argv = [sys.executable, os.path.abspath(__file__), "--ray-driver", out, "--features", folder,
                "--num-cpus", str(num_cpus)]
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"bench/stage2.py: Ray search failed (exit {done.returncode}):\n{done.stdout[-4000:]}")
        with open(os.path.join(out, "timing.json"), encoding="utf-8") as handle:
            return {"wall_seconds": wall, **json.load(handle)}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def ray_driver(out: str, features: str, num_cpus: int) -> None:
    """Child process of ray_search: run_search on OUT/trials.json, one CPU a trial; write OUT/timing.json."""
    import search_stage2  # tune/ is on PYTHONPATH, so Ray's workers import _trial by name too

    with open(os.path.join(out, "trials.json"), encoding="utf-8") as handle:
        trials = json.load(handle)
    args = search_stage2.get_args_parser().parse_args(["--features", features, "--out", out,
                                                       "--num-cpus", str(num_cpus), "--cpus-per-trial", "1"])
    started = time.perf_counter()
    results = search_stage2.run_search(args, trials, out)
    timing = {"search_seconds": time.perf_counter() - started, "trials": len(results),
              "trial_seconds": sum(result["seconds"] for result in results)}
    if len(results) != len(trials):
        sys.exit(f"only {len(results)} of {len(trials)} trials finished")
    with open(os.path.join(out, "timing.json"), "w", encoding="utf-8") as handle:
        json.dump(timing, handle)


def ray_speedup(folder: str, epochs_scale: float, nproc: int) -> dict:
    """The Ray set one after another here (torch threads = nproc) and through Ray; a joint-only search's
    wall clock minus its trial's seconds is Ray's fixed cost (Python, imports, start-up, shutdown)."""
    trials = ray_set(epochs_scale)
    sequential, _ = run_trials(folder, trials)
    parallel = ray_search(folder, trials, nproc)
    joint = ray_search(folder, [{"method": "joint", "params": {}}], nproc)
    overhead = joint["wall_seconds"] - joint["trial_seconds"]
    return {"trials": len(trials), "sequential_seconds": sequential, "ray": parallel, "ray_overhead_seconds": overhead,
            "speedup": sequential / parallel["wall_seconds"],
            "speedup_without_overhead": sequential / (parallel["wall_seconds"] - overhead)}


def report(rows: list[dict], sweep: dict, ray: dict, args, nproc: int) -> tuple[float, list[str]]:
    """Print the table and the summary lines; return (estimated whole-search seconds, notes)."""
    from lt_dist.stage2.methods import SEARCH_SPACE

    print(markdown_table(["method", "seconds", "notes"], [
        [f"`{r['method']}`", round(r["seconds"], 2), (f"epochs {r['epochs']}; " if r["epochs"] else "")
         + f"val all {r['val_all']:.1f}%, few {r['val_few']:.1f}%"] for r in rows]))
    seconds = {r["method"]: r["seconds"] for r in rows}
    whole = sweep["seconds"] + sum(len(space) * seconds[m] for m, space in SEARCH_SPACE.items() if m != "tau_norm")
    on_ray, parallel = whole / ray["speedup_without_overhead"] + ray["ray_overhead_seconds"], ray["ray"]
    print(f"\n- whole default search ({sum(map(len, SEARCH_SPACE.values()))} trials): ~{whole:.1f} s one after "
          f"another (grid size x seconds above; tau_norm: the sweep), ~{on_ray:.1f} s on Ray at the speed-up below\n"
          f"- tau sweep ({sweep['taus']} taus, val): {sweep['seconds']:.2f} s; floor {sweep['floor_seconds']:.2f} s "
          f"= {sweep['taus']} x {sweep['matmul_seconds'] * 1e3:.1f} ms at {sweep['matmul_gflops']:.1f} GFLOP/s "
          f"(numpy float32, best of 3); {sweep['x_floor']:.2f}x floor; best tau {sweep['best_tau']} "
          f"(val all {sweep['best_val_all']:.1f}%)\n"
          f"- Ray, {ray['trials']} trials: one after another {ray['sequential_seconds']:.1f} s; Ray --num-cpus "
          f"{nproc} --cpus-per-trial 1 {parallel['wall_seconds']:.1f} s wall (run_search "
          f"{parallel['search_seconds']:.1f} s); speed-up {ray['speedup']:.2f}x, "
          f"{ray['speedup_without_overhead']:.2f}x without Ray's fixed {ray['ray_overhead_seconds']:.1f} s")
    notes = [f"one trial = lt_dist.stage2.search.run_trial (fit on train, score val) in this process, torch "
             f"threads {nproc}, numpy BLAS threads as is; one untimed joint trial warms caches first.",
             f"features: {args.scale:g} x ImageNet-LT rows, {args.dim}-d (latent {args.latent_dim}), "
             f"snr {args.snr:g}, seed {args.seed}; tau_norm sees the true centres, so it beats NCM here.",
             f"Ray set: crt, lws (epochs x {args.ray_epochs_scale or args.epochs_scale:g}), ncm l2/cos, joint, "
             f"{len(TAUS)} taus; Ray's wall clock is a fresh Python running tune/search_stage2.run_search "
             f"(no refit on test, no report), start to exit."]
    if args.epochs_scale < 1:
        notes.append(f"--epochs-scale {args.epochs_scale:g}: trained methods ran that fraction of their default "
                     f"epochs (at least 1): shorter times, and accuracies below what full training gives.")
    print("\n" + "\n".join(f"- {note}" for note in notes), flush=True)
    return whole, notes


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every split's rows per class")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension")
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="multiplies the epochs of crt/lws/learned_tau/cosine (at least 1)")
    parser.add_argument("--ray-epochs-scale", type=float,
                        help="the same for crt/lws in the Ray comparison; None: --epochs-scale")
    parser.add_argument("--latent-dim", type=int, default=64, help="dimension of the subspace the classes live in")
    parser.add_argument("--snr", type=float, default=3.5, help="class separation in noise standard deviations")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated features")
    parser.add_argument("--ray-driver", metavar="DIR", help=argparse.SUPPRESS)  # internal: ray_search's child
    parser.add_argument("--features", help=argparse.SUPPRESS)
    parser.add_argument("--num-cpus", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Generate (or reuse) the features, time the three parts, print them, write bench/results/stage2.json."""
    args = get_args_parser().parse_args(argv)
    if args.ray_driver:
        return ray_driver(args.ray_driver, args.features, args.num_cpus)
    scales = (args.epochs_scale, args.ray_epochs_scale or 1)
    if args.scale <= 0 or not 0 < args.latent_dim <= args.dim or not all(0 < scale <= 1 for scale in scales):
        sys.exit("bench/stage2.py: need --scale > 0, 0 < --latent-dim <= --dim, epochs scales in (0, 1]")
    import torch

    nproc = os.cpu_count() or 1
    torch.set_num_threads(nproc)
    started = time.perf_counter()
    folder = feature_folder(args.scale, args.dim, args.latent_dim, args.seed, args.snr)
    print(f"features: {folder} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    run_trials(folder, [{"method": "joint", "params": {}}])  # warm-up: imports, page cache
    rows = per_method(folder, args.epochs_scale)
    print("per method done; tau sweep", file=sys.stderr)
    sweep = tau_sweep(folder)
    print("tau sweep done; Ray", file=sys.stderr)
    ray = ray_speedup(folder, args.ray_epochs_scale or args.epochs_scale, nproc)
    whole, notes = report(rows, sweep, ray, args, nproc)
    settings = {key: getattr(args, key) for key in ("scale", "dim", "latent_dim", "snr", "seed", "epochs_scale",
                                                    "ray_epochs_scale")}
    path = write_results("stage2", {"settings": {**settings, "features": folder, "torch_threads": nproc},
                                    "methods": rows, "whole_search_seconds_estimate": whole,
                                    "tau_sweep": sweep, "ray": ray, "notes": notes})
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
