"""Stage 1: train the representation with DeepSpeed, evaluate every epoch, test once.

    checks (no process group yet) -> process group -> model, loaders, engine
    -> [resume] -> epochs: train (step checkpoints) -> val -> best model -> checkpoint
    -> test on the best-on-val weights -> test_metrics.json
Everything a user can get wrong is checked before the first collective call, so
every rank stops with the same message instead of hanging.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from lt_dist.config import TrainConfig, dump, resolve_head, to_dict, validate
from lt_dist.cpu_budget import CpuPlan, node_cpus, plan_cpus
from lt_dist.data.balance import resolve_strategy
from lt_dist.data.loader import BalancedLoader, LoaderConfig
from lt_dist.data.presets import get_preset
from lt_dist.data.sampler import SamplerConfig, SequentialSampler
from lt_dist.dist import World, gather_placements, process_group_closed_at_exit
from lt_dist.engine import checkpoint as ckpt
from lt_dist.engine import ds
from lt_dist.engine.ckpt_clock import CheckpointClock
from lt_dist.engine.init_from import load_backbone
from lt_dist.engine.logs import RunLogger
from lt_dist.engine.loop import evaluate, train_one_epoch
from lt_dist.engine.preempt import Preempted, PreemptionWatch
from lt_dist.engine.reports import append_per_class, write_test_results
from lt_dist.errors import UserInputError
from lt_dist.losses import LOSSES, build_loss
from lt_dist.models.resnet import MODELS, build_model
from lt_dist.optional import require
from lt_dist.outputs import check_output_folder
from lt_dist.runinfo import provenance
from lt_dist.shards.manifest import check_splits_agree, load_manifest, resolve_split, test_split


def check_inputs(config: TrainConfig, ds_config_path: str, world: World) -> tuple[dict, dict]:
    """Everything checkable before distributed start-up; returns (resolved ds.json, dataset facts)."""
    require("deepspeed", "stage 1 (launch/train_repr.py)")
    if config.decoder == "dali":
        require("nvidia.dali", "--decoder dali")
    try:
        validate(config)
        resolve_strategy(config.sampler)
        get_preset(config.train_preset), get_preset(config.eval_preset)
    except ValueError as error:
        raise UserInputError(str(error)) from None
    for kind, name, table in (("arch", config.arch, MODELS), ("loss", config.loss, LOSSES)):
        if name not in table:
            raise UserInputError(f"unknown {kind} {name!r}; choose one of {', '.join(table)}")
    if config.init_from and not os.path.isfile(config.init_from):
        raise UserInputError(f"--init-from {config.init_from!r} does not exist")
    say = print if world.is_main else (lambda *a, **k: None)
    ds_config = ds.resolve_ds_config(ds.load_ds_config(ds_config_path), world.world_size,
                                     torch.cuda.is_available(), say)
    train = load_manifest(resolve_split(config.data, "train"))
    val = load_manifest(resolve_split(config.data, "val"))
    counts = train.samples_per_class
    try:  # parameter names and values of the loss, before any process starts
        build_loss(config.loss, counts, **config.loss_params)
    except (TypeError, ValueError) as error:
        raise UserInputError(f"--loss {config.loss} with --loss-param {config.loss_params}: {error}") from None
    if len(val.samples_per_class) != len(counts):
        raise UserInputError(f"val has {len(val.samples_per_class)} classes, train has {len(counts)}")
    test_dir = test_split(config.data)
    check_splits_agree([train.split_dir, val.split_dir] + ([test_dir] if test_dir else []))
    facts = {"train_dir": train.split_dir, "val_dir": val.split_dir, "counts": counts,
             "class_names": train.class_names, "test_dir": test_dir}
    check_output_folder(config.out, "--out")
    ckpt_dir = os.path.join(config.out, "checkpoints")
    if config.resume:
        ckpt.check_resume_compatible(config.out, config.arch, len(counts), config.small_input,
                                     {key: getattr(config, key) for key in ("epochs", "seed", "sampler",
                                                                            "sampler_draw")})
        ckpt.check_resume_world(config.out, world.world_size)
        facts["resume_tag"] = ckpt.choose_resume_tag(ckpt_dir, say)  # every rank: the same files, the same tag
    else:
        held = [name for name in ("config.json", ckpt.BEST_MODEL, "log.jsonl", "checkpoints")
                if os.path.exists(os.path.join(config.out, name))]
        if held:
            raise UserInputError(f"--out {config.out!r} already holds a run ({held[0]}): pass --resume to "
                                 f"continue it, or choose another --out")
    return ds_config, facts


def _preset(name: str, size: int | None, **overrides):
    return get_preset(name, **overrides) if size is None else get_preset(name, size=size, **overrides)


def plan_threads(config: TrainConfig, world: World) -> CpuPlan:
    """This rank's torch and DALI threads: the flags where given, else cpu_budget's plan for the node.

    An OMP_NUM_THREADS in the environment (set by the user, or by torchrun for several ranks)
    is an explicit choice and wins over the plan for the torch threads.
    """
    ranks_on_node = int(os.environ.get("LOCAL_WORLD_SIZE", world.world_size // world.num_nodes))
    plan = plan_cpus(node_cpus(), ranks_on_node, config.decoder, torch.cuda.is_available(), config.workers)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    torch_threads, why = plan.torch_threads, plan.why
    if config.torch_threads:
        torch_threads, why = config.torch_threads, f"{why}; torch threads from --torch-threads"
    elif omp.isdigit() and int(omp) >= 1:
        torch_threads, why = int(omp), f"{why}; torch threads from OMP_NUM_THREADS"
    return CpuPlan(torch_threads, config.dali_threads or plan.dali_threads, config.workers, why)


def build_loaders(config: TrainConfig, facts: dict, world: World, micro_batch: int, dali_threads: int = 2):
    """(train BalancedLoader, val loader, test loader or None)."""
    sampler = SamplerConfig(config.sampler, config.seed, config.epochs, "pad", None, config.sampler_draw)
    jitter_off = {"color_jitter": 0.0} if config.no_jitter else {}
    train = BalancedLoader(LoaderConfig(facts["train_dir"], micro_batch,
                                        _preset(config.train_preset, config.image_size, **jitter_off),
                                        sampler, config.decoder, config.workers, dali_threads), world,
                           facts["counts"])

    def sequential(split_dir: str | None):
        if split_dir is None:
            return None
        size = int(load_manifest(split_dir).samples_per_class.sum())
        loader_config = LoaderConfig(split_dir, config.eval_batch_size, _preset(config.eval_preset, config.image_size),
                                     SamplerConfig(), config.decoder, config.workers, dali_threads)
        return BalancedLoader(loader_config, world, sampler=SequentialSampler(size, world, config.eval_batch_size))

    return train, sequential(facts["val_dir"]), sequential(facts["test_dir"])


def run_stage1(config: TrainConfig, ds_config_path: str) -> dict:
    """Train, validate and test; returns the test metrics (val metrics when there is no test split).

    After SIGTERM/SIGINT it returns {"preempted": tag, "step": global step} instead, once
    every rank has written checkpoint `tag` (see engine/preempt.py).
    """
    world = World.from_env()  # launchers set RANK/WORLD_SIZE before the process group exists
    ds_config, facts = check_inputs(config, ds_config_path, world)
    # Handlers first: a signal during start-up is honoured at the first step.
    with PreemptionWatch(config.grace_seconds) as watch:
        ds.init_distributed()
        with process_group_closed_at_exit():
            try:
                return _train_and_test(config, ds_config, facts, world, watch)
            except Preempted as stop:  # every rank raised it at the same step: a clean exit
                return {"preempted": stop.tag, "step": stop.step, "signal": watch.received_name}


def _train_and_test(config: TrainConfig, ds_config: dict, facts: dict, world: World,
                    watch: PreemptionWatch) -> dict:
    """The body of run_stage1 inside the process group: train, checkpoint, validate, test."""
    say = print if world.is_main else (lambda *a, **k: None)
    micro, gas = ds_config["train_micro_batch_size_per_gpu"], ds_config["gradient_accumulation_steps"]
    threads = plan_threads(config, world)
    torch.set_num_threads(threads.torch_threads)  # before the model is built and the first step runs
    say(f"cpus: {threads.torch_threads} torch thread(s), {threads.dali_threads if config.decoder == 'dali' else 0} "
        f"DALI thread(s), {threads.workers} loader worker(s) per rank ({threads.why}; --torch-threads, "
        f"--dali-threads and --workers set them)")
    torch.manual_seed(config.seed)
    counts, num_classes = facts["counts"], len(facts["counts"])
    head, cosine_scale = resolve_head(config)
    model = build_model(config.arch, num_classes, config.small_input, head, cosine_scale)
    if config.init_from and not config.resume:  # a resume takes every weight from its checkpoint
        load_backbone(model.backbone, config.init_from, say)
    train_loader, val_loader, test_loader = build_loaders(config, facts, world, micro, threads.dali_threads)
    engine = ds.initialize(model, ds_config, total_steps=config.epochs * (len(train_loader) // gas), log=say)
    loss_fn = build_loss(config.loss, counts, **config.loss_params).to(engine.device)
    ckpt_dir = os.path.join(config.out, "checkpoints")
    best = {"val_all": -1.0, "epoch": None}
    if config.resume:
        client = ds.load_checkpoint(engine, ckpt_dir, tag=facts["resume_tag"])
        if client is None:
            raise UserInputError(f"--resume: {ckpt_dir}/{facts['resume_tag']} could not be loaded")
        train_loader.load_state_dict(client["loader"])
        best = client["best"]
        say(f"resumed from {ckpt_dir}/{facts['resume_tag']} at epoch {train_loader.epoch}, batch {train_loader.batches_done}")
    logger = RunLogger(config.out, world.is_main)
    placements = gather_placements(world)  # collective: every rank takes part
    if world.is_main:
        dump(config, os.path.join(config.out, "config.json"),
             {"deepspeed": ds_config, "world_size": world.world_size, "num_nodes": world.num_nodes,
              "ranks": placements, "num_classes": num_classes,
              "class_names": facts["class_names"], "train_counts": counts.tolist(),
              **provenance(os.path.abspath(__file__))})

    clock = CheckpointClock(config.ckpt_minutes)

    def save(end_of_epoch: bool) -> str:
        epoch = train_loader.epoch - (1 if end_of_epoch else 0)
        tag = ckpt.checkpoint_tag(engine.global_steps, epoch, end_of_epoch)
        clock.restart()
        ds.save_checkpoint(engine, ckpt_dir, tag, {
            "epoch": epoch, "global_step": engine.global_steps, "loader": train_loader.state_dict(),
            "best": best, "config": to_dict(config), "ds_config": ds_config})
        if world.is_main:  # save_checkpoint returns after every rank finished writing
            ckpt.prune_checkpoints(ckpt_dir, config.keep_checkpoints)
        return tag

    def on_step() -> None:
        scheduled = bool(config.ckpt_every) and engine.global_steps % config.ckpt_every == 0
        scheduled = clock.due(engine.global_steps, engine.device) or scheduled  # collective: call on every rank
        stop = watch.agreed(engine.device)  # collective, every step: all ranks stop at the same one
        if scheduled or stop:
            tag = save(end_of_epoch=False)
            if stop:
                logger.log("preempted", engine.global_steps, tag=tag)  # this step has no "train" line
                logger.close()  # the entry point prints the one line saying how to resume
                raise Preempted(tag, engine.global_steps)

    for epoch in range(train_loader.epoch, config.epochs):
        train_loader.set_epoch(epoch)
        summary = train_one_epoch(engine, train_loader, loss_fn, epoch=epoch, num_epochs=config.epochs,
                                  log_every=config.log_every, show_progress=world.is_main and config.progress, on_step=on_step,
                                  on_log=lambda values: logger.log("train", engine.global_steps, **values),
                                  mixup_alpha=config.mixup, seed=config.seed, rank=world.rank)
        metrics = evaluate(engine.module, val_loader, num_classes, counts, engine.device)
        scores = {key: metrics[key] for key in ("all", "many", "medium", "few")}
        logger.log("epoch", engine.global_steps, **summary, **{f"val_{k}": v for k, v in scores.items()})
        say(f"epoch {epoch}: loss {summary['loss']:.4f}, {summary['images_per_s']:.0f} img/s, data wait "
            f"{summary['data_wait']:.0%}, val all {scores['all']:.2f} many {scores['many']:.2f} "
            f"medium {scores['medium']:.2f} few {scores['few']:.2f}")
        if world.is_main:
            append_per_class(os.path.join(config.out, "val_per_class.csv"), epoch, metrics, counts, facts["class_names"])
        if scores["all"] > best["val_all"]:
            best = {"val_all": scores["all"], "epoch": epoch, "val": scores}
            if world.is_main:
                ckpt.save_best_model(config.out, engine.module, {
                    "arch": config.arch, "num_classes": num_classes, "small_input": config.small_input,
                    "epoch": epoch, "val": scores, "train_counts": counts.tolist(),
                    "class_names": facts["class_names"], "eval_preset": config.eval_preset,
                    "image_size": config.image_size, "head": head, "cosine_scale": cosine_scale})
        tag = save(end_of_epoch=True)
        if watch.agreed(engine.device):  # signalled during validation: the epoch's checkpoint is the stop
            logger.close()
            raise Preempted(tag, engine.global_steps)
    result = _final_test(config, engine, test_loader or val_loader, num_classes, counts, facts, world, best)
    # log.jsonl and TensorBoard get the final scores too (kind "test": tb test/all, test/few, ...)
    logger.log("test", engine.global_steps, split="test" if facts["test_dir"] else "val", **result)
    logger.close()
    return result


def _final_test(config, engine, loader, num_classes, counts, facts, world, best) -> dict:
    """Evaluate the best-on-val weights once on test (never used to choose anything)."""
    dist.barrier()
    state = ckpt.load_best_model(config.out)["state_dict"]
    engine.module.load_state_dict(state)
    split = "test" if facts["test_dir"] else "val"
    metrics = evaluate(engine.module, loader, num_classes, counts, engine.device)
    scores = {key: metrics[key] for key in ("all", "many", "medium", "few")}
    if world.is_main:
        write_test_results(config.out, split, metrics, counts, facts["class_names"], best)
        print(f"{split} (best-on-val epoch {best['epoch']}): all {scores['all']:.2f} many {scores['many']:.2f} "
              f"medium {scores['medium']:.2f} few {scores['few']:.2f}")
    return scores
