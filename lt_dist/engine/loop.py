"""One training epoch and one evaluation pass; everything they use is an argument."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from lt_dist.metrics import group_accuracy
from lt_dist.mixup import mix_batch, mixup_draw, mixup_loss, mixup_seed
from lt_dist.progress import Progress


def train_one_epoch(engine, loader, loss_fn, *, epoch: int, num_epochs: int, log_every: int,
                    on_log: Callable[[dict], None], on_step: Callable[[], None], show_progress: bool,
                    mixup_alpha: float = 0.0, seed: int = 0, rank: int = 0) -> dict:
    """Train over the rest of the loader's current epoch.

    Args:
        engine: DeepSpeed engine; loader: BalancedLoader (positioned by its state);
        on_log: called with a dict of step metrics every log_every optimizer steps;
        on_step: called after every optimizer step (checkpoints hook in here);
        mixup_alpha: > 0 mixes each batch (lt_dist/mixup.py), drawn from (seed, epoch, rank, batch index).
    Returns:
        epoch summary: mean loss, images/s, data-wait fraction.
    """
    engine.train()
    loss_fn.set_epoch(epoch, num_epochs)
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
    remaining = len(loader) - loader.batches_done
    # a bar on a terminal, a line every 30 s in a log file; the run's ETA counts the epochs still to come
    later_batches = (num_epochs - epoch - 1) * len(loader)
    bar = Progress(remaining, f"epoch {epoch}/{num_epochs}", enabled=show_progress,
                   extra_left_s=lambda per_batch: per_batch * later_batches)
    started = window_start = time.perf_counter()
    wait = window_wait = 0.0
    images_seen = window_images = 0
    loss_sum, loss_count = torch.zeros(()), 0
    batches = iter(loader)
    while True:
        fetch = time.perf_counter()
        batch = next(batches, None)
        waited = time.perf_counter() - fetch
        wait, window_wait = wait + waited, window_wait + waited
        if batch is None:
            break
        images, labels = batch[0].to(engine.device, dtype), batch[1].to(engine.device)
        step_before = engine.global_steps
        if mixup_alpha > 0:  # the loader counted this batch already: its index is batches_done - 1
            lam, perm = mixup_draw(mixup_alpha, len(labels), mixup_seed(seed, epoch, rank, loader.batches_done - 1))
            mixed, labels_a, labels_b = mix_batch(images, labels, lam, perm)
            loss = mixup_loss(loss_fn, engine(mixed), labels_a, labels_b, lam)
        else:
            loss = loss_fn(engine(images), labels)
        engine.backward(loss)
        engine.step()
        loss_sum += loss.detach().float().cpu()
        loss_count += 1
        images_seen += len(labels)
        window_images += len(labels)
        bar.update(1)
        if engine.global_steps == step_before:
            continue  # inside a gradient-accumulation window
        on_step()
        if engine.global_steps % log_every == 0:
            now = time.perf_counter()
            # .item() syncs with the device: only on log steps
            values = {"epoch": epoch, "loss": loss.item(), "lr": float(engine.get_lr()[0]),
                      "images_per_s": window_images * dist.get_world_size() / (now - window_start),
                      "data_wait": window_wait / (now - window_start)}
            on_log(values)
            bar.update(0, loss=round(values["loss"], 4), lr=values["lr"], **{
                "img/s": int(values["images_per_s"]), "data wait": f"{values['data_wait']:.0%}"})
            window_start, window_wait, window_images = now, 0.0, 0
    bar.close()
    elapsed = time.perf_counter() - started
    return {"epoch": epoch, "loss": float(loss_sum) / max(loss_count, 1),
            "images_per_s": images_seen * dist.get_world_size() / max(elapsed, 1e-9),
            "data_wait": wait / max(elapsed, 1e-9), "seconds": elapsed}


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, num_classes: int, train_counts: np.ndarray, device) -> dict:
    """Top-1 All and Many/Medium/Few over a split read once across ranks.

    Returns:
        {"all", "many", "medium", "few"} in percent, plus "correct" and "total": (C,) int64
        per-class arrays summed over ranks.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros(num_classes, dtype=torch.int64, device=device)
    total = torch.zeros(num_classes, dtype=torch.int64, device=device)
    dtype = next(model.parameters()).dtype
    for images, labels in loader:
        labels = labels.to(device)
        predictions = model(images.to(device, dtype)).argmax(dim=1)
        total += torch.bincount(labels, minlength=num_classes)
        correct += torch.bincount(labels[predictions == labels], minlength=num_classes)
    if dist.is_initialized():
        dist.all_reduce(correct)
        dist.all_reduce(total)
    model.train(was_training)
    correct_np, total_np = correct.cpu().numpy(), total.cpu().numpy()
    return {**group_accuracy(correct_np, total_np, train_counts), "correct": correct_np, "total": total_np}
