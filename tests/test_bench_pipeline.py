"""bench/pipeline.py's arithmetic: a run's log.jsonl into phases, the ladder into shares, rounds merged.

The benchmark itself takes minutes (`make bench-pipeline`); these check what it computes
from what it measured, on hand-made records whose answers are known.
"""
from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import REPO


def load_pipeline():
    sys.path.insert(0, str(REPO))  # bench.common, as the script finds it
    try:
        spec = importlib.util.spec_from_file_location("bench_pipeline", REPO / "bench" / "pipeline.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO))


pipeline = load_pipeline()
WORLD_BATCH = 128  # 64 per rank x 2 ranks


def train(step: int, epoch: int, time: float, rate: float = 40.0, wait: float = 0.02) -> dict:
    return {"kind": "train", "step": step, "time": time, "epoch": epoch, "images_per_s": rate, "data_wait": wait}


def test_a_finished_run_is_split_into_start_up_epochs_eval_checkpoint_and_end():
    # launched at 0; 10-step windows of 32 s at 40 images/s (1280 images each); 2 epochs of 20 steps
    records = [train(10, 0, 52.0), train(20, 0, 84.0),
               {"kind": "epoch", "step": 20, "time": 87.0, "epoch": 0, "images_per_s": 40.0, "data_wait": 0.02,
                "seconds": 64.0},
               train(30, 1, 121.0, wait=0.04), train(40, 1, 153.0, wait=0.04),
               {"kind": "epoch", "step": 40, "time": 155.0, "epoch": 1, "images_per_s": 40.0, "data_wait": 0.04,
                "seconds": 64.0},
               {"kind": "test", "step": 40, "time": 160.0}]
    real = pipeline.real_run_phases(records, launched=0.0, ended=170.0, world_batch=WORLD_BATCH,
                                    checkpoint_times={0: 88.0, 1: 156.0})
    phases = real["phases"]
    assert phases["start-up (launcher, imports, process group, engine, first batch)"] == pytest.approx(20.0)
    assert phases["training epochs (log.jsonl's seconds)"] == 128.0
    assert phases["per-epoch eval (val)"] == pytest.approx(3.0 + 2.0)
    assert phases["per-epoch checkpoint (best model + DeepSpeed checkpoint)"] == pytest.approx(1.0 + 1.0)
    assert phases["closing test, exit"] == pytest.approx(170.0 - 156.0)
    assert sum(phases.values()) == pytest.approx(real["wall_s"]) == 170.0
    assert real["images_per_s"] == pytest.approx(40.0) and real["epochs"] == 2 and real["window_steps"] == 10
    assert real["images_per_s_with_eval_ckpt"] == pytest.approx(40.0 * 128 / (128 + 5 + 2))
    assert real["data_wait"] == pytest.approx(0.03) and not real["preempted"]


def test_a_run_stopped_by_sigterm_is_read_from_its_log_windows():
    records = [train(10, 0, 50.0, rate=32.0, wait=0.05),
               {"kind": "preempted", "step": 11, "time": 55.0, "tag": "gs000000011-epoch0000-mid"}]
    real = pipeline.real_run_phases(records, launched=0.0, ended=60.0, world_batch=WORLD_BATCH, checkpoint_times={})
    window = 10 * WORLD_BATCH / 32.0  # 40 s
    assert real["preempted"] and real["epochs"] == 0 and real["steps"] == 10
    assert real["images_per_s"] == pytest.approx(32.0) and real["data_wait"] == pytest.approx(0.05)
    assert real["images_per_s_with_eval_ckpt"] is None
    phases = real["phases"]
    assert phases["start-up (launcher, imports, process group, engine, first batch)"] == pytest.approx(50.0 - window)
    assert phases["SIGTERM: the step after the last log line, the pre-emption checkpoint"] == pytest.approx(5.0)
    assert phases["exit"] == pytest.approx(5.0)
    assert sum(phases.values()) == pytest.approx(60.0)


def test_a_log_without_a_train_line_is_refused():
    with pytest.raises(ValueError, match="no train records"):
        pipeline.real_run_phases([{"kind": "preempted", "step": 3, "time": 9.0}], 0.0, 10.0, WORLD_BATCH, {})


def ladder(rates: dict, loader_start: float = 2.56, eval_ckpt: float = 6.4) -> dict:
    return {"rates": rates, "steps_per_epoch": 20, "micro_batch": 64, "world_size": 2,
            "loader_start_s": loader_start, "eval_ckpt_s": eval_ckpt, "other_load": {}}


def test_the_ladder_adds_each_part_and_its_shares_add_up_to_the_whole_loop():
    rates = {"plain": 50.0, "allreduce": 40.0, "deepspeed": 40.0, "loader": 32.0, "augment": 25.0, "agree": 25.0,
             "logging": 25.0, "progress": 20.0}
    per_image = pipeline.ladder_per_image(ladder(rates))
    per_epoch = 20 * 128
    assert per_image["loader_start"] == pytest.approx(1 / 32 + 2.56 / per_epoch)
    # augmentation adds its difference to the loader case, on top of the loader's start
    assert per_image["augment"] == pytest.approx(per_image["loader_start"] + 1 / 25 - 1 / 32)
    assert per_image["progress"] == pytest.approx(per_image["augment"] + 1 / 20 - 1 / 25)
    assert per_image["eval_ckpt"] == pytest.approx(per_image["progress"] + 6.4 / per_epoch)
    rows = pipeline.ladder_rows(ladder(rates), per_image)
    assert [row[0] for row in rows] == [what for _, what, _ in pipeline.LADDER]
    shares = [float(row[3].rstrip("%")) for row in rows]
    assert sum(shares) == pytest.approx(100, abs=len(rows))  # rounded to whole percents
    assert rows[2][2] == 1.0  # the DeepSpeed step is the unit of the "x DeepSpeed step" column
    assert rows[2][3] == "+0%"  # the engine cost nothing over plain + all-reduce here


def test_rounds_before_and_after_the_real_run_merge_into_one_ladder():
    def part(seconds: float, load: float) -> dict:
        names = ("plain", "deepspeed")
        return {"threads": {"torch_threads": 1}, "micro_batch": 64, "world_size": 2, "steps_per_epoch": 20,
                "seconds": dict.fromkeys(names, seconds), "images": dict.fromkeys(names, 256),
                "loader_starts": [1.0, 3.0], "eval_ckpt": [seconds], "data_wait": {"loader": [0.1]},
                "other_load": {name: [load] for name in names}}

    merged = pipeline.summarise_ladder([part(8.0, 0.0), part(24.0, 1.0)])
    assert merged["rates"]["deepspeed"] == pytest.approx(512 / 32.0)  # summed images over summed seconds
    assert merged["loader_start_s"] == 2.0 and merged["eval_ckpt_s"] == 16.0
    assert merged["other_load"]["plain"] == 0.5 and merged["other_load_rounds"]["plain"] == [0.0, 1.0]
    assert merged["workers_launched"] == 2


def test_a_change_of_load_between_the_two_sides_of_r_is_flagged():
    assert pipeline.load_drift(0.05, 0.2) == ""
    assert "R mixes two machines" in pipeline.load_drift(0.05, 1.1)


def test_the_benchmark_runs_stage_1_with_the_demos_flags():
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    demo = next(line for line in text.splitlines() if "launch/train_repr.py" in line and "DEMO_RUN" in line)
    words = demo.split()
    pairs = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
    flags = pipeline.DEMO_FLAGS
    for i, flag in enumerate(flags):
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            assert pairs.get(flag) == flags[i + 1], flag
        else:
            assert flag in words, flag
    assert pairs["--ds_config"] == pipeline.DS_CONFIG and pairs["--num_gpus"] == "2"
