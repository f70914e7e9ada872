"""The steps of bench/gpu_check.py, one per process: `python bench/gpu_steps.py STEP SETTINGS.json RESULT.json`.

Each step reads its settings (the GPU sizes, or the dry run's tiny CPU ones: the same
code either way), does its work and writes one JSON object with its figures, its wall
time and the peak GPU memory it allocated (None on the CPU). gpu_check.py runs them
in order, each in a fresh process, so a step that fails or runs out of time leaves
the others' figures standing.

    photos      the long-tailed JPEG folder (2,000 photo crops, ImageNet-like sizes)
    ceiling     measured bf16 matmul rate: the denominator of model FLOP utilisation
    decode      images/s of torchvision nvJPEG (decode only, and at the ImageNet train
                preset), and of DALI where it is importable ("mixed" on a GPU)
    train_step  ResNeXt-152 32x4d bf16 training images/s, plain PyTorch and DeepSpeed ZeRO-1
    stage1      lt_dist pack, then a 2-epoch launch/train_repr.py run with the torchvision decoder
    extract     lt_dist extract of that run
    stage2      tau sweep and cRT on the device, on those features and on ImageNet-LT-sized ones
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path[:0] = [REPO, BENCH, os.path.join(REPO, "launch")]  # lt_dist, common/train_step, train_repr

from common import image_files, load_photos, long_tailed_counts, photo_folder  # noqa: E402


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings measure work, not launches)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_photos(settings: dict) -> dict:
    """Build (or reuse) the photo folder under the work folder."""
    photos = load_photos(settings.get("photo_source"))
    root = photo_folder(settings["photos"], settings["classes"], photos=photos, data_dir=settings["work"])
    return {"folder": root, "images": len(image_files(root))}


def step_ceiling(settings: dict) -> dict:
    """bf16 matmul TFLOP/s at n x n x n, the best of a few timed blocks; plus what the machine is."""
    device, n = torch.device(settings["device"]), settings["matmul_n"]
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=generator)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=generator)
    a @ b  # warm-up: library handles, kernel choice
    sync(device)
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(settings["matmul_reps"]):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * settings["matmul_reps"] / (time.perf_counter() - started))
    info = {"bf16_matmul_tflops": best / 1e12, "matmul_n": n, "torch": torch.__version__,
            "python": sys.version.split()[0]}
    import torchvision

    info["torchvision"] = torchvision.__version__
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, capability=f"{props.major}.{props.minor}")
    return info


def _batches(data: list[bytes], size: int) -> list[list[bytes]]:
    return [data[start:start + size] for start in range(0, len(data), size)]


def _rate(run, batches: list, passes: int, device: torch.device) -> float:
    """Images/s of run(batch) over `passes` timed passes after one warm-up pass."""
    for batch in batches:
        run(batch)
    sync(device)
    started = time.perf_counter()
    for _ in range(passes):
        for batch in batches:
            run(batch)
    sync(device)
    return passes * sum(len(batch) for batch in batches) / (time.perf_counter() - started)


def step_decode(settings: dict) -> dict:
    """Decode images/s on the photo folder, all bytes in RAM, batch by batch."""
    from lt_dist.data.presets import get_preset
    from lt_dist.data.tvbatch import decode_batch, decode_images, nvjpeg_decodable
    from lt_dist.data.tvdecode import decode_rgb
    from lt_dist.optional import installed

    device, preset = torch.device(settings["device"]), get_preset("imagenet_train")
    data = []
    for path in image_files(settings["photo_folder"])[:settings["decode_images"]]:
        with open(path, "rb") as handle:
            data.append(handle.read())
    batches = _batches(data, settings["decode_batch"])
    generator = torch.Generator().manual_seed(0)
    result = {"images": len(data), "batch": settings["decode_batch"], "preset": preset.name,
              "nvjpeg_decodable": sum(nvjpeg_decodable(item) for item in data),
              "torchvision_decode_only": _rate(lambda b: decode_images(b, device), batches,
                                               settings["decode_passes"], device),
              "torchvision_train_preset": _rate(lambda b: decode_batch(b, preset, generator, device), batches,
                                                settings["decode_passes"], device)}
    # nvJPEG against PIL on the same files: the mean gap in grey levels (0 on the CPU)
    sample = data[:8]
    result["mean_abs_diff_vs_pil"] = float(np.mean([
        (image.cpu().float() - decode_rgb(item).float()).abs().mean()
        for item, image in zip(sample, decode_images(sample, device))]))
    if installed("nvidia.dali"):
        result.update(_dali_rate(batches, preset, settings, device))
    else:
        result["dali"] = "not installed"
    return result


def _dali_rate(batches: list[list[bytes]], preset, settings: dict, device: torch.device) -> dict:
    """DaliDecoder images/s ("mixed" on a GPU, else "cpu") over the same batches: a warm-up pass, then timed ones."""
    from lt_dist.data.dali import DaliDecoder

    dali_device = "mixed" if device.type == "cuda" else "cpu"
    labelled = [[(item, 0) for item in batch] for batch in batches]

    def one_pass() -> int:
        decoded = 0
        for images, _ in DaliDecoder(labelled, preset, settings["decode_batch"], num_threads=4, seed=0,
                                     device=dali_device):
            decoded += len(images)
        sync(device)
        return decoded

    one_pass()  # warm-up: pipeline build, nvJPEG handles
    started = time.perf_counter()
    decoded = sum(one_pass() for _ in range(settings["decode_passes"]))
    return {f"dali_{dali_device}_train_preset": decoded / (time.perf_counter() - started)}


def step_train_step(settings: dict) -> dict:
    """Training images/s of `arch` in bf16, plain PyTorch (autocast) and DeepSpeed ZeRO-1, plus MFU."""
    from torch.utils.flop_counter import FlopCounterMode

    from lt_dist.models.resnet import build_model
    from train_step import ds_engine

    device, size, batch = torch.device(settings["device"]), settings["size"], settings["batch"]
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    probe = build_model(settings["arch"], 1000, settings["small_input"]).to(device)
    with FlopCounterMode(display=False) as counter:  # forward + backward of 2 images, float32 shapes
        probe(torch.randn(2, 3, size, size, device=device)).sum().backward()
    flops_per_image = counter.get_total_flops() / 2
    loss_fn = torch.nn.CrossEntropyLoss()
    bf16 = device.type == "cuda"
    result = {"arch": settings["arch"], "size": size, "batch": batch, "flops_per_image": flops_per_image,
              "bf16": bf16}
    # NCHW, as stage 1 trains (DeepSpeed's start-up broadcast needs contiguous parameters);
    # channels_last is measured for plain PyTorch alone, as the layout cuDNN prefers.
    for name, fmt in (("plain", torch.contiguous_format), ("plain_channels_last", torch.channels_last)):
        model = probe.to(memory_format=fmt)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        batches = [(torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt),
                    torch.randint(0, 1000, (batch,), device=device)) for _ in range(2)]

        def plain_step(images, labels, model=model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
            sync(device)

        result.update(_timed(name, plain_step, batches, settings, device))
        del optimizer, model
    del probe  # free the plain model before DeepSpeed builds its own
    if device.type == "cuda":
        torch.cuda.empty_cache()
    engine = ds_engine(build_model(settings["arch"], 1000, settings["small_input"]), batch, 0.1)
    batches = [(images.contiguous(), labels) for images, labels in batches]

    def deepspeed_step(images, labels):
        dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
        engine.backward(loss_fn(engine(images.to(dtype)).float(), labels))
        engine.step()
        sync(device)

    result.update(_timed("deepspeed", deepspeed_step, batches, settings, device),
                  deepspeed_bf16=bool(engine.bfloat16_enabled()))
    result["deepspeed_vs_plain"] = result["deepspeed_images_per_s"] / result["plain_images_per_s"]
    return result


def _timed(name: str, step, batches: list, settings: dict, device: torch.device) -> dict:
    """{name_images_per_s, name_peak_gpu_mib} of `step` over blocks x steps timed calls."""
    from train_step import time_steps

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = sum(time_steps(step, batches, settings["steps"]) for _ in range(settings["blocks"]))
    images = settings["steps"] * settings["blocks"] * len(batches[0][1])
    return {f"{name}_images_per_s": images / seconds, f"{name}_peak_gpu_mib": _peak_mib(device)}


def _ds_json(path: str, batch: int) -> str:
    """The paper's optimisation (SGD, bf16, ZeRO 1) at train batch `batch`, written to path."""
    config = {"train_batch_size": batch, "optimizer": {"type": "SGD", "params": {
        "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}}, "bf16": {"enabled": True},
        "zero_optimization": {"stage": 1}, "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    return path


def step_stage1(settings: dict) -> dict:
    """Pack the photo folder (train + val), then 2 epochs of launch/train_repr.py with --decoder torchvision."""
    from lt_dist.cli import main as lt_dist
    from train_repr import main as train_repr

    work = settings["work"]
    shards, run = os.path.join(work, "shards"), os.path.join(work, "run")
    started = time.perf_counter()
    status = lt_dist(["pack", settings["photo_folder"], "--out", shards, "--val-per-class",
                      str(settings["val_per_class"]), "--workers", str(settings["pack_workers"]), "--no-progress"])
    if status:
        raise SystemExit(f"lt_dist pack exited {status}")
    pack_seconds = time.perf_counter() - started
    argv = ["--ds_config", _ds_json(os.path.join(work, "ds.json"), settings["stage1_batch"]), "--data", shards,
            "--out", run, "--arch", settings["stage1_arch"], "--epochs", str(settings["epochs"]),
            "--train-preset", settings["train_preset"], "--eval-preset", settings["eval_preset"],
            "--decoder", "torchvision", "--workers", str(settings["loader_workers"]),
            "--eval-batch-size", str(settings["stage1_batch"]), "--log-every", "5"]
    argv += ["--small-input", "--image-size", str(settings["image_size"])] if settings["image_size"] else []
    status = train_repr(argv)
    if status:
        raise SystemExit(f"train_repr.py exited {status}")
    with open(os.path.join(run, "log.jsonl"), encoding="utf-8") as handle:
        epochs = [record for record in map(json.loads, handle) if record["kind"] == "epoch"]
    return {"pack_seconds": pack_seconds, "run": run, "shards": shards, "arch": settings["stage1_arch"],
            "decoder": ("torchvision nvJPEG (main process)" if torch.cuda.is_available()
                        else "torchvision PIL (workers)"),
            "epochs": [{key: record[key] for key in ("epoch", "images_per_s", "data_wait", "seconds", "val_all")}
                       for record in epochs]}


def step_extract(settings: dict) -> dict:
    """lt_dist extract of the stage-1 run: train and val features."""
    from lt_dist.cli import main as lt_dist
    from lt_dist.stage2 import store

    work = settings["work"]
    features = os.path.join(work, "features")
    status = lt_dist(["extract", "--ckpt", os.path.join(work, "run"), "--data", os.path.join(work, "shards"),
                      "--out", features, "--decoder", "torchvision", "--batch-size", str(settings["stage1_batch"]),
                      "--workers", str(settings["loader_workers"])])
    if status:
        raise SystemExit(f"lt_dist extract exited {status}")
    with open(os.path.join(features, store.INDEX), encoding="utf-8") as handle:
        return {"features": features, "splits": json.load(handle)["splits"]}


def tau_sweep(features: np.ndarray, labels: np.ndarray, weight: np.ndarray, taus: list[float],
              device: torch.device) -> tuple[list[float], float]:
    """Top-1 (percent) of f (w_j / ||w_j||^tau)^T for each tau, on `device`; and the seconds it took
    (copy to the device included; the stored features are read-only memory maps, hence np.array)."""
    from lt_dist.stage2.heads import tau_normalize

    features, labels, weight = np.array(features), np.array(labels), np.array(weight)
    started = time.perf_counter()
    x, y, w = (torch.from_numpy(array).to(device) for array in (features, labels, weight))
    hits = torch.stack([((x @ tau_normalize(w, tau).T).argmax(dim=1) == y).sum() for tau in taus])
    accuracy = (100.0 * hits.cpu().numpy() / len(labels)).tolist()  # one read-back for the sweep
    return accuracy, time.perf_counter() - started


def _stage2_on(train, val, weight: np.ndarray, settings: dict, device: torch.device) -> dict:
    """tau sweep (the official 21-point grid) on val and one cRT fit on `device`."""
    from lt_dist.stage2.methods import fit_method
    from lt_dist.stage2.types import StageOneClassifier

    taus = [round(0.1 * i, 1) for i in range(21)]
    accuracy, sweep_seconds = tau_sweep(val.features, val.labels, weight, taus, device)
    classifier = StageOneClassifier(weight, np.zeros(len(weight), np.float32), np.bincount(train.labels,
                                                                                           minlength=len(weight)))
    params = {"device": str(device), "epochs": settings["crt_epochs"]}
    fit_method("crt", train, classifier, {**params, "epochs": 1})  # warm-up: lazy imports, CUDA kernels
    started = time.perf_counter()
    predictor = fit_method("crt", train, classifier, params)
    crt_seconds = time.perf_counter() - started
    crt_top1 = float(100.0 * (predictor(val.features).argmax(axis=1) == val.labels).mean())
    best = int(np.argmax(accuracy))
    return {"rows": len(train.labels), "dim": int(weight.shape[1]), "classes": len(weight),
            "tau_sweep_seconds": sweep_seconds, "best_tau": taus[best], "best_tau_top1": accuracy[best],
            "crt_epochs": settings["crt_epochs"], "crt_seconds": crt_seconds, "crt_top1": crt_top1}


def step_stage2(settings: dict) -> dict:
    """Stage 2 on the device: the extracted features, then ImageNet-LT-sized random ones (timing only)."""
    from lt_dist.stage2.store import load_features
    from lt_dist.stage2.types import FeatureSplit

    device = torch.device(settings["device"])
    if device.type == "cuda":  # the CUDA context and cuBLAS before the timed sweep, as cRT has its warm-up
        (torch.ones(8, 8, device=device) @ torch.ones(8, 8, device=device)).sum().item()
    splits, stored = load_features(os.path.join(settings["work"], "features"), splits=("train", "val"))
    extracted = _stage2_on(FeatureSplit(splits["train"].features, splits["train"].labels),
                           FeatureSplit(splits["val"].features, splits["val"].labels),
                           np.asarray(stored["weight"]), settings, device)
    rng = np.random.default_rng(0)
    rows, dim, classes = settings["stage2_rows"], settings["stage2_dim"], settings["stage2_classes"]
    # ImageNet-LT's shape: an exponential profile, imbalance 256 (1,280 down to 5 per class)
    labels = rng.permutation(np.repeat(np.arange(classes), long_tailed_counts(rows, classes, 256.0)))
    features = rng.standard_normal((rows, dim), dtype=np.float32)
    weight = rng.standard_normal((classes, dim), dtype=np.float32)
    sized = _stage2_on(FeatureSplit(features, labels), FeatureSplit(features[:20000], labels[:20000]), weight,
                       settings, device)
    return {"extracted": extracted, "imagenet_lt_sized": sized}


STEPS = {"photos": step_photos, "ceiling": step_ceiling, "decode": step_decode, "train_step": step_train_step,
         "stage1": step_stage1, "extract": step_extract, "stage2": step_stage2}


def _peak_mib(device: torch.device) -> float | None:
    """Peak GPU memory allocated since the last reset, MiB (None on the CPU)."""
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def main(argv: list[str]) -> int:
    step, settings_path, result_path = argv
    with open(settings_path, encoding="utf-8") as handle:
        settings = json.load(handle)
    device = torch.device(settings["device"])
    started = time.perf_counter()
    result = STEPS[step](settings)
    result.update(seconds=round(time.perf_counter() - started, 2), peak_gpu_mib=_peak_mib(device))
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
