"""bench/pipeline.py's tables: the ladder's cumulative time per image, its rows and the real run's, load drift."""
from __future__ import annotations

try:
    from bench.pipeline_ladder import LADDER
except ImportError:  # run as a script: python bench/pipeline.py
    from pipeline_ladder import LADDER


def ladder_per_image(ladder: dict) -> dict[str, float]:
    """Cumulative seconds per image (whole world) after each case of LADDER.

    Measured cases give their own time; the loader's start and eval/checkpoint are spread
    over a 20-step epoch; augmentation, agreement, logging and progress each add their
    difference to the case before them in the loop (so noise in one does not shift the rest).
    """
    rates = ladder["rates"]
    per_epoch = ladder["steps_per_epoch"] * ladder["micro_batch"] * ladder["world_size"]
    per_image = {name: 1 / rates[name] for name in ("plain", "allreduce", "deepspeed", "loader")}
    per_image["loader_start"] = per_image["loader"] + ladder["loader_start_s"] / per_epoch
    previous, base = "loader_start", "loader"
    for name in ("augment", "agree", "logging", "progress"):
        per_image[name] = per_image[previous] + 1 / rates[name] - 1 / rates[base]
        previous = base = name
    per_image["eval_ckpt"] = per_image["progress"] + ladder["eval_ckpt_s"] / per_epoch
    return per_image


def ladder_rows(ladder: dict, per_image: dict[str, float]) -> list[list]:
    """The ladder table: images/s, x the DeepSpeed step, the part's share of the whole loop's time."""
    whole, deepspeed = per_image["eval_ckpt"], per_image["deepspeed"]
    rows, before = [], None
    for name, what, flag in LADDER:
        if before is None:
            share = f"{per_image[name] / whole:.0%}"
        else:  # DeepSpeed replaces plain + all-reduce: its share is the engine's difference to that
            cost = per_image[name] - per_image["allreduce" if name == "deepspeed" else before]
            share = f"{cost / whole:+.0%}"
        load = ladder["other_load"].get(name)
        rows.append([what, round(1 / per_image[name], 1), round(deepspeed / per_image[name], 2), share, flag,
                     "" if load is None else round(load, 2)])
        before = name
    return rows


def real_rows(real: dict, per_image: dict[str, float], ds_rate: float) -> list[list]:
    """The real run's rows under the ladder."""
    whole = per_image["eval_ckpt"]
    if real["preempted"] and not real["epochs"]:
        what = (f"real run: launch/train_repr.py, demo flags, first {real['steps']} steps then SIGTERM "
                f"(log.jsonl windows)")
    else:
        what = f"real run: launch/train_repr.py, demo flags, {real['epochs']} epoch(s) (log.jsonl epoch lines)"
    rate = real["images_per_s"]
    rows = [[what, round(rate, 1), round(rate / ds_rate, 2),
             f"{(1 / rate - per_image['progress']) / whole:+.0%} vs the loop", "", round(real["other_load"], 2)]]
    if real["images_per_s_with_eval_ckpt"]:
        rate = real["images_per_s_with_eval_ckpt"]
        rows.append(["real run with its per-epoch eval and checkpoint", round(rate, 1), round(rate / ds_rate, 2),
                     f"{(1 / rate - whole) / whole:+.0%} vs the loop", "", ""])
    return rows


def load_drift(step_load: float, run_load: float, tolerance: float = 0.25) -> str:
    """A warning when the rest of the machine was busier during one side of R than the other."""
    if abs(step_load - run_load) <= tolerance:
        return ""
    return (f"note: the rest of the machine kept {step_load:.2f} cores busy during the DeepSpeed step and "
            f"{run_load:.2f} during the real run: R mixes two machines; rerun when the load is steady")
