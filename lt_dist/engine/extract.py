"""`lt_dist extract`: run the frozen stage-1 backbone once over a split, store the features.

Eval transform only, every image once. Launched under torchrun (WORLD_SIZE > 1) each
rank takes rows r, r + W, ... and writes a part; rank 0 merges the parts in manifest
order, so the files do not depend on the number of processes.
"""
from __future__ import annotations

import os
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist

from lt_dist.data.loader import BalancedLoader, LoaderConfig
from lt_dist.data.presets import get_preset
from lt_dist.data.reader import ShardReader
from lt_dist.data.sampler import SamplerConfig, SequentialSampler
from lt_dist.dist import World, process_group_closed_at_exit
from lt_dist.engine.checkpoint import best_model_path, file_sha256, load_best_model
from lt_dist.errors import UserInputError
from lt_dist.models.resnet import build_model
from lt_dist.optional import require
from lt_dist.outputs import check_output_folder
from lt_dist.progress import Progress
from lt_dist.runinfo import provenance
from lt_dist.shards.manifest import check_splits_agree, load_manifest, resolve_split
from lt_dist.stage2 import store


def _device(world: World) -> torch.device:
    return torch.device("cuda", world.local_rank) if torch.cuda.is_available() else torch.device("cpu")


@torch.no_grad()
def extract_rows(model, split_dir: str, num_samples: int, world: World, preset, decoder: str, batch_size: int,
                 workers: int, seed: int = 0, progress: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This rank's (rows (n,), labels (n,), features (n, D) float32) of a split of num_samples.

    seed: of the augmentation (a training preset draws its crops from it; eval presets ignore it).
    progress: the bar's name on the main rank ("" for none); every rank reads an equal share, so the
    main rank's images/s and ETA stand for the whole job."""
    sampler = SequentialSampler(num_samples, world, batch_size)
    loader = BalancedLoader(LoaderConfig(split_dir, batch_size, preset, SamplerConfig(seed=seed), decoder=decoder,
                                         num_workers=workers), world, sampler=sampler)
    device = next(model.parameters()).device
    bar = Progress(len(sampler.rows), progress, enabled=bool(progress) and world.is_main, unit="img")
    features, labels = [], []
    for images, batch_labels in loader:
        features.append(model.features(images.to(device)).float().cpu().numpy())
        labels.append(batch_labels.cpu().numpy())
        bar.update(len(batch_labels))
    bar.close()
    return sampler.rows, np.concatenate(labels), np.concatenate(features)


def extract(ckpt: str, data: str, splits: list[str], out: str, decoder: str = "dali",
            batch_size: int = 256, workers: int = 2, bn_batches: int = 0, seed: int = 0,
            train_views: int = 0, progress: bool = True) -> dict:
    """Write out/<split>.arrow for each split, classifier.arrow and features.json; returns the index.

    bn_batches > 0: first re-estimate the BN statistics on that many class-balanced training
    batches (engine.recalibrate), so every split's features come from the recalibrated backbone.
    train_views > 0: also K passes over train with the TRAINING augmentation (view k seeded by
    (seed, k)), written as train.view000.arrow ... in train.arrow's row order.
    """
    world = World.from_env()
    if decoder == "dali":
        require("nvidia.dali", "--decoder dali")
    check_output_folder(out, "--out")
    best = load_best_model(ckpt)
    ckpt_sha256 = file_sha256(best_model_path(ckpt))
    previous = check_features_folder(out, ckpt_sha256, splits)
    split_dirs = {split: resolve_split(data, split) for split in splits}
    check_splits_agree(list(split_dirs.values()))
    counts = {split: load_manifest(split_dir).samples_per_class for split, split_dir in split_dirs.items()}
    for split, split_dir in split_dirs.items():
        classes = len(counts[split])
        if classes != best["num_classes"]:
            raise UserInputError(f"{split_dir} has {classes} classes, the checkpoint {best['num_classes']}")
    starts_group = world.world_size > 1 and not dist.is_initialized()  # a group it joined is the caller's
    if starts_group:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    with process_group_closed_at_exit() if starts_group else nullcontext():
        return _extract_splits(best, split_dirs, counts, world, out, ckpt, data, decoder, batch_size, workers,
                               ckpt_sha256, previous, bn_batches, seed, train_views, progress)


def check_features_folder(out: str, ckpt_sha256: str, splits: list[str]) -> dict:
    """Refuse to add features of this checkpoint to a folder that holds another checkpoint's.

    Returns the split entries already there (same checkpoint; kept in the new index).
    """
    if not os.path.isdir(out):
        return {}
    info = store.read_index(out)
    stored = sorted(name for name in os.listdir(out) if name.endswith(".arrow"))
    if info is None:
        if stored:
            raise UserInputError(f"--out {out!r} holds {stored[0]} but no {store.INDEX}: features of unknown "
                                 f"origin are never mixed with new ones; choose another --out")
        return {}
    if info.get("ckpt_sha256") != ckpt_sha256:
        kept = sorted(set(info.get("splits", {})) - set(splits)) or sorted(info.get("splits", {}))
        raise UserInputError(f"--out {out!r} holds features of checkpoint {info.get('ckpt')!r} "
                             f"(sha256 {str(info.get('ckpt_sha256'))[:12]}; splits {', '.join(kept) or 'none'}), "
                             f"this is sha256 {ckpt_sha256[:12]}: features of different checkpoints are never "
                             f"mixed; choose another --out")
    return dict(info.get("splits", {}))


def _extract_splits(best: dict, split_dirs: dict, counts: dict, world: World, out: str, ckpt: str, data: str,
                    decoder: str, batch_size: int, workers: int, ckpt_sha256: str, previous: dict,
                    bn_batches: int = 0, seed: int = 0, train_views: int = 0, progress: bool = True) -> dict:
    """The body of extract once the process group (if any) is up; returns the index.

    The index is written before the first features file and after each split, so a
    folder never holds a .arrow whose checkpoint it does not record.
    """
    model = build_model(best["arch"], best["num_classes"], best["small_input"], best.get("head", "linear"),
                        best.get("cosine_scale"))
    model.load_state_dict(best["state_dict"])
    model.eval().to(_device(world))
    size = best.get("image_size")
    preset = get_preset(best.get("eval_preset", "imagenet_eval"), **({"size": size} if size else {}))
    os.makedirs(out, exist_ok=True)
    info = {"ckpt": ckpt, "ckpt_sha256": ckpt_sha256, "data": data, "arch": best["arch"],
            "feature_dim": model.feature_dim, "num_classes": best["num_classes"], "best_epoch": best.get("epoch"),
            **provenance(os.path.abspath(__file__)),
            "splits": {split: entry for split, entry in previous.items() if split not in split_dirs}}
    if bn_batches:
        info["bn_recalibrate"] = _recalibrate(model, ckpt, data, best, world, decoder, batch_size, workers,
                                              bn_batches, seed)
    if world.is_main:
        store.write_index(out, info)
    for split, split_dir in split_dirs.items():
        started = time.perf_counter()
        num_samples = int(counts[split].sum())
        rows, labels, features = extract_rows(model, split_dir, num_samples, world, preset, decoder, batch_size,
                                              workers, progress=f"extract {split}" if progress else "")
        _write_parts(out, split, split_dir, world, rows, labels, features)
        info["splits"][split] = {"num_samples": num_samples, "seconds": round(time.perf_counter() - started, 2),
                                 "ckpt": ckpt, "ckpt_sha256": ckpt_sha256}
        if world.is_main:
            store.write_index(out, info)
            print(f"{split}: {info['splits'][split]['num_samples']} features of {model.feature_dim} dims "
                  f"in {info['splits'][split]['seconds']} s")
    if train_views:
        info["train_views"] = _extract_views(model, ckpt, data, best, world, out, decoder, batch_size, workers,
                                             train_views, seed)
    if world.is_main:
        weight = model.fc.weight.detach().float().cpu().numpy()
        # a cosine head has no bias: zeros, and features.json says which head the rows belong to
        bias = np.zeros(len(weight), np.float32) if model.fc.bias is None else model.fc.bias.detach().cpu().numpy()
        info["head"] = best.get("head", "linear")
        if info["head"] == "cosine":
            info["cosine_scale"] = float(model.fc.scale)
        store.write_classifier(out, weight, bias, np.asarray(best["train_counts"]), best["class_names"])
        store.write_index(out, info)
    return info


def _train_preset(ckpt: str, best: dict):
    """(name, Preset) of the stage-1 run's training augmentation at its crop size."""
    from lt_dist.engine.classifier import stage1_settings

    size = best.get("image_size")
    name = stage1_settings(ckpt).get("train_preset", "imagenet_train")
    return name, get_preset(name, **({"size": size} if size else {}))


def _extract_views(model, ckpt: str, data: str, best: dict, world: World, out: str, decoder: str, batch_size: int,
                   workers: int, views: int, seed: int) -> dict:
    """K augmented passes over train, each written like a split (float32: 4 D bytes per sample per view)."""
    train_dir = resolve_split(data, "train")
    num_samples = int(load_manifest(train_dir).samples_per_class.sum())
    name, preset = _train_preset(ckpt, best)
    for view in range(views):
        view_seed = int(np.random.SeedSequence([seed, view]).generate_state(1)[0])
        rows, labels, features = extract_rows(model, train_dir, num_samples, world, preset, decoder, batch_size,
                                              workers, seed=view_seed)
        _write_parts(out, f"train.view{view:03d}", train_dir, world, rows, labels, features)
    if world.is_main:
        print(f"train: {views} augmented views ({name}), {4 * model.feature_dim} bytes per sample per view")
    return {"views": views, "train_preset": name, "seed": seed, "bytes_per_sample_per_view": 4 * model.feature_dim}


def _recalibrate(model, ckpt: str, data: str, best: dict, world: World, decoder: str, batch_size: int,
                 workers: int, bn_batches: int, seed: int) -> dict:
    """Class-balanced BN re-estimation with the stage-1 run's TRAINING preset; returns what was done."""
    from lt_dist.engine.recalibrate import recalibrate_bn

    train_dir = resolve_split(data, "train")
    name, preset = _train_preset(ckpt, best)
    ran = recalibrate_bn(model, train_dir, load_manifest(train_dir).samples_per_class, preset, decoder,
                         bn_batches, batch_size, workers, seed, world)
    if world.is_main:
        print(f"BN statistics re-estimated on {ran} class-balanced batches of {batch_size} ({name}) per process")
    return {"sampler": "class", "batches": bn_batches, "batch_size": batch_size, "train_preset": name, "seed": seed}


def _write_parts(out: str, split: str, split_dir: str, world: World, rows, labels, features) -> None:
    """Single process: write the split. Several: each rank a part, rank 0 merges them."""
    reader = ShardReader(split_dir, max_open_files=1)
    if world.world_size == 1:
        store.write_split(os.path.join(out, f"{split}.arrow"), rows, [reader.key(r) for r in rows], labels, features)
        return
    part = os.path.join(out, f".{split}.part{world.rank:05d}.npz")
    np.savez(part, rows=rows, labels=labels, features=features)
    dist.barrier()
    if world.is_main:
        parts = [np.load(os.path.join(out, f".{split}.part{rank:05d}.npz")) for rank in range(world.world_size)]
        all_rows = np.concatenate([p["rows"] for p in parts])
        store.write_split(os.path.join(out, f"{split}.arrow"), all_rows, [reader.key(r) for r in all_rows],
                          np.concatenate([p["labels"] for p in parts]),
                          np.concatenate([p["features"] for p in parts]))
        for rank in range(world.world_size):
            os.remove(os.path.join(out, f".{split}.part{rank:05d}.npz"))
    dist.barrier()
