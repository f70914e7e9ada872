"""Where the time of stage 1 goes (issue 13, items 1 and 4), side by side in one run.

Same model, batch and world throughout: the demo's ResNet-10 (small-input stem) at 28 px,
64 images per rank, 2 ranks on this node, launch/ds_demo.json, the thread plan of
lt_dist/cpu_budget.py (what the real run logs as "cpus: ..."). Three parts:

1. The ladder, in a 2-rank process group started by DeepSpeed's launcher as the demo
   starts stage 1, its cases alternating in rounds so the machine's noise hits all alike:
   the plain PyTorch step on in-memory batches; plus a gradient all-reduce across the 2
   ranks; the DeepSpeed step (ZeRO 1, SGD); then the real loop (lt_dist.engine.loop.
   train_one_epoch with stage 1's own loaders, loss and engine), adding one part at a
   time: loader + decode (DALI, no augmentation: `--train-preset small_eval`), the
   loader's start each epoch, augmentation (small_train), the per-step agreement
   collectives (pre-emption watch, checkpoint clock), logging every step (log.jsonl and
   TensorBoard), the progress display (rank 0), per-epoch eval and checkpoint. A part's
   share is what it adds to the time per image over the whole loop's. With 2 rounds or
   more, half of them run after the real run, so a change in the machine's load between
   the two sides of R shows in both.
2. The real run: `deepspeed --num_gpus 2 launch/train_repr.py` with the demo's flags
   (Makefile, `demo:`) on the train and val splits of --data (the test split is left out,
   so its closing test reads val: 200 images instead of 10,000; --full-test keeps it).
   From its log.jsonl: the images/s its epoch lines report (R's numerator), the data wait
   of each 10-step window, the time of start-up, eval, checkpoints and the end. The
   loader, the all-reduce, the agreement collectives and eval/checkpoint have no flag
   that turns them off in the real run: the ladder measures them in-process, and the
   run's log.jsonl gives the data wait and the eval/checkpoint seconds. --quick stops the
   run with SIGTERM (as a scheduler would) once log.jsonl shows step 10: R then comes
   from that first 10-step window, loader start included.
3. Extraction (item 4): `lt_dist extract` (the demo's command, one split) with the model
   the ladder saved (same architecture, size and head as the demo's; speed does not
   depend on the weights) against the same model's forward pass alone (model.features,
   eval mode, batch 256, the torch threads a fresh process gets, as extract's) and the
   loader alone (the eval preset, batch 256, one worker, DALI's default threads: what
   extract builds).

The machine may be shared: "other load" is the cores the rest of the machine kept busy
(everything but this benchmark's processes) while a case ran; a note before the last
line says when it differed between the DeepSpeed step and the real run.

    python bench/pipeline.py [--quick] [--rounds 2] [--epochs 2] [--extract-split train] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

try:
    from bench.common import markdown_table, write_results
    from bench.pipeline_extract import EXTRACT_BATCH, extraction
    from bench.pipeline_ladder import DEMO_FLAGS, DS_CONFIG, LADDER, demo_argv, summarise_ladder, worker
    from bench.pipeline_procs import BIN, REPO, data_view, free_port, run_logged, steps_logged
    from bench.pipeline_runlog import checkpoint_commit_times, read_log, real_run_phases
    from bench.pipeline_tables import ladder_per_image, ladder_rows, load_drift, real_rows
except ImportError:  # run as a script: python bench/pipeline.py
    from common import markdown_table, write_results
    from pipeline_extract import EXTRACT_BATCH, extraction
    from pipeline_ladder import DEMO_FLAGS, DS_CONFIG, LADDER, demo_argv, summarise_ladder, worker
    from pipeline_procs import BIN, REPO, data_view, free_port, run_logged, steps_logged
    from pipeline_runlog import checkpoint_commit_times, read_log, real_run_phases
    from pipeline_tables import ladder_per_image, ladder_rows, load_drift, real_rows

# The parts are bench/pipeline_*.py; the names tests/test_bench_pipeline.py reads from here stay importable here.
__all__ = ["DEMO_FLAGS", "DS_CONFIG", "LADDER", "ladder_per_image", "ladder_rows", "load_drift", "main",
           "real_run_phases", "summarise_ladder"]

DEMO_DATA = os.path.join(REPO, "shards", "fashion_mnist_lt")


def main(argv: list[str] | None = None) -> int:
    """The command line: run the benchmark (or, with --worker, one rank of the ladder); the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="one round of 2 steps per case, the real run stopped by SIGTERM after its first 10 "
                        "steps, extract on val: about 2.5 minutes on 2 quiet cores, more on a shared machine")
    parser.add_argument("--data", default=DEMO_DATA, help="packed dataset (default: the demo's shards)")
    parser.add_argument("--rounds", type=int, help="alternating rounds of the ladder (default 2; quick 1)")
    parser.add_argument("--steps", type=int, help="timed in-memory steps per case and round (default 3; quick 2)")
    parser.add_argument("--loop-steps", type=int, help="timed real-loop steps per case and round (default 4; "
                        "quick 2)")
    parser.add_argument("--epochs", type=int, help="epochs of the real run (default 2; quick 1)")
    parser.add_argument("--real-steps", type=int, help="stop the real run by SIGTERM once log.jsonl shows this "
                        "step (0: run its epochs; quick 10)")
    parser.add_argument("--extract-split", help="split lt_dist extract reads (default train; quick val)")
    parser.add_argument("--full-test", action="store_true", help="keep the test split: the run ends with a "
                        "10,000-image test pass, as `make demo`'s does")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR (new or empty) and keep it: runs, logs, features")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a rank of the ladder: write its JSON here
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # the launcher's
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"rounds": (2, 1), "steps": (3, 2), "loop_steps": (4, 2), "epochs": (2, 1), "real_steps": (0, 10),
                "extract_split": ("train", "val")}
    for key, (full, short) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, short if quick else full)
    if args.worker:
        worker(args)
        return 0
    started = time.perf_counter()
    if args.keep and os.path.isdir(args.keep) and os.listdir(args.keep):
        parser.error(f"--keep {args.keep}: choose a new or empty folder")
    work = args.keep or tempfile.mkdtemp(prefix="lt-pipeline-")
    os.makedirs(work, exist_ok=True)
    try:
        return report(args, work, started)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def report(args: argparse.Namespace, work: str, started: float) -> int:
    """The ladder, the real run and extraction in `work`; print the tables, write bench/results/pipeline.json."""
    data = data_view(args.data, work, args.full_test)
    deepspeed = os.path.join(BIN, "deepspeed")

    def say(text: str) -> None:
        print(f"{text} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    def ladder_rounds(rounds: int, index: int) -> dict:
        """One 2-rank process group running `rounds` rounds of the ladder; its raw results."""
        path = os.path.join(work, f"ladder{index}.json")
        run_logged([deepspeed, "--num_gpus", "2", "--master_port", str(free_port()), os.path.abspath(__file__),
                    "--worker", path, "--work", work, "--data", data, "--rounds", str(rounds),
                    "--steps", str(args.steps), "--loop-steps", str(args.loop_steps)],
                   os.path.join(work, f"ladder{index}.log"), "the ladder (2 ranks)")
        with open(path, encoding="utf-8") as handle:
            part = json.load(handle)
        say(f"ladder: {rounds} round(s) done")
        return part

    # 1. the ladder; with 2 rounds or more, half of them after the real run (a sandwich: drift in the
    # machine's load then hits both sides of R alike)
    before = -(-args.rounds // 2) if args.rounds > 1 else 1
    parts = [ladder_rounds(before, 0)]
    # 2. the real run
    run_dir = os.path.join(work, "run")
    log_path = os.path.join(run_dir, "log.jsonl")
    stop = (lambda: steps_logged(log_path) >= args.real_steps) if args.real_steps else None
    launched, ended, run_load, _ = run_logged(
        [deepspeed, "--quiet", "--num_gpus", "2", "--master_port", str(free_port()), "launch/train_repr.py",
         *demo_argv(data, run_dir, args.epochs)], os.path.join(work, "run.log"), "the real run (launch/train_repr.py)",
        stop_when=stop)
    world_batch = parts[0]["micro_batch"] * parts[0]["world_size"]
    real = real_run_phases(read_log(log_path), launched, ended, world_batch,
                           checkpoint_commit_times(os.path.join(run_dir, "checkpoints")))
    real["other_load"] = run_load
    say("real run done")
    if args.rounds > before:
        parts.append(ladder_rounds(args.rounds - before, 1))
    ladder = summarise_ladder(parts)
    # 3. extraction, with the model the ladder saved (same architecture and size as the run's)
    extract = extraction(os.path.join(work, "ladder"), data, args.extract_split, work,
                         forward_batches=1 if args.quick else 4)
    total = time.perf_counter() - started

    per_image = ladder_per_image(ladder)
    rows = ladder_rows(ladder, per_image)
    ds_rate = ladder["rates"]["deepspeed"]
    rows += real_rows(real, per_image, ds_rate)
    threads = ladder["threads"]
    print(f"resnet10 (small-input), 28 px, {ladder['micro_batch']} images per rank x {ladder['world_size']} ranks, "
          f"CPU ({os.cpu_count()} cores), per rank {threads['torch_threads']} torch thread(s), "
          f"{threads['dali_threads']} DALI thread(s), {threads['workers']} loader worker(s); "
          f"{args.rounds} round(s) of {args.steps} in-memory and {args.loop_steps} loop steps per case")
    print(markdown_table(["case (each adds one part)", "images/s", "x DeepSpeed step", "share of the loop's time",
                          "real run: switched by", "other load"], rows))
    print("share: what the part adds to the time per image, over the whole loop's (the last ladder row). The "
          "parts with no flag are measured in the ladder and read from the real run's log.jsonl below.")
    phase_rows = [[name, round(seconds, 1), f"{seconds / real['wall_s']:.0%}"]
                  for name, seconds in real["phases"].items()]
    phase_rows.append(["whole run (launch to exit)", round(real["wall_s"], 1), "100%"])
    rates = real["epoch_images_per_s"] or real["window_images_per_s"]
    print(f"\nthe real run, from its log.jsonl: {'epochs' if real['epochs'] else 'windows'} at "
          f"{', '.join(f'{r:.1f}' for r in rates)} images/s; data wait (no flag: log.jsonl) "
          f"{real['data_wait']:.1%} of the training time (windows of {real['window_steps']} steps: "
          f"{', '.join(f'{w:.1%}' for w in real['data_wait_windows'])}); other load {run_load:.2f} cores")
    print(markdown_table(["phase", "seconds", "share"], phase_rows))
    forward, loader = extract["forward"], extract["loader"]
    extract_rows = [
        [f"forward only (model.features, batch {EXTRACT_BATCH}, {forward['torch_threads']} torch threads)",
         round(forward["images_per_s"], 1), 1.0, round(forward["other_load"], 2)],
        [f"loader only (DALI, eval preset, batch {EXTRACT_BATCH}, {loader['workers']} worker, "
         f"{loader['dali_threads']} DALI threads)", round(loader["images_per_s"], 1),
         round(loader["images_per_s"] / forward["images_per_s"], 2), round(loader["other_load"], 2)],
        [f"lt_dist extract --split {extract['split']} ({extract['num_samples']} images, features.json's seconds)",
         round(extract["extract_images_per_s"], 1), round(extract["ratio"], 2),
         round(extract["extract_other_load"], 2)],
        ["lt_dist extract, the whole command (start-up included)", round(extract["command_images_per_s"], 1),
         round(extract["command_images_per_s"] / forward["images_per_s"], 2), ""]]
    print("\nextraction (item 4): the same ResNet-10, forward passes only")
    print(markdown_table(["what", "images/s", "x forward only", "other load"], extract_rows))
    print(f"extract / forward only: {extract['ratio']:.2f}")
    settings = {key: getattr(args, key)
                for key in ("quick", "data", "rounds", "steps", "loop_steps", "epochs", "real_steps", "extract_split",
                            "full_test")}
    ratio = real["images_per_s"] / ds_rate
    path = write_results("pipeline", {"settings": settings, "ladder": ladder, "ladder_table": rows,
                                      "real_run": real, "extraction": extract, "bench_seconds": total,
                                      "real_run_over_step": ratio})
    print(f"\nwrote {path} in {total:.0f} s")
    drift = load_drift(ladder["other_load"]["deepspeed"], real["other_load"])
    if drift:
        print(drift)
    print(f"real run / step: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
