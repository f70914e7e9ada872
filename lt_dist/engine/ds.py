"""DeepSpeed in one place: read and resolve ds.json, start the engine, checkpoints.

ds.json is the user's: the script derives nothing that contradicts it. It fills in
only what ds.json leaves open (the micro-batch when absent), switches bf16 off on a
CPU (with a log line, since CPU autocast is not what DeepSpeed's bf16 means), and
raises naming both values when ds.json disagrees with itself or with the world size.
"""
from __future__ import annotations

# torch and deepspeed are imported inside the functions that use them: reading and
# checking ds.json stays cheap, so a mistake in it costs no start-up.
import copy
import json
import math
import os
from typing import TYPE_CHECKING, Callable

from lt_dist.errors import UserInputError

if TYPE_CHECKING:
    import torch


def load_ds_config(path: str) -> dict:
    """ds.json as a dict; missing or malformed files raise UserInputError naming the path."""
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except FileNotFoundError:
        raise UserInputError(f"DeepSpeed config {path!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"DeepSpeed config {path!r} is not valid JSON: {error}") from None
    except OSError as error:
        raise UserInputError(f"DeepSpeed config {path!r} cannot be read: {error.strerror}") from None
    if not isinstance(config, dict) or "train_batch_size" not in config:
        raise UserInputError(f"DeepSpeed config {path!r} must be a JSON object with train_batch_size")
    check_numbers(config, path)
    return config


# Largest batch sizes accepted: beyond them a number is a typo that would allocate in proportion to it.
BATCH_BOUNDS = {"train_batch_size": 1 << 20, "train_micro_batch_size_per_gpu": 65_536,
                "gradient_accumulation_steps": 1 << 20}


def check_numbers(config: dict, path: str) -> None:
    """Batch sizes are whole numbers within BATCH_BOUNDS; optimizer parameters are finite and >= 0."""
    for key, high in BATCH_BOUNDS.items():
        value = config.get(key)
        if value is None and key != "train_batch_size":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise UserInputError(f"DeepSpeed config {path!r}: {key} must be a whole number in [1, {high}], "
                                 f"got {value!r}")
    optimizer = config.get("optimizer", {})
    params = optimizer.get("params", {}) if isinstance(optimizer, dict) else None
    if not isinstance(params, dict):
        raise UserInputError(f"DeepSpeed config {path!r}: optimizer must be an object with a params object")
    for key, value in params.items():
        numbers = value if isinstance(value, list) else [value]  # betas are a pair
        for number in numbers:
            if isinstance(number, bool):  # switches such as nesterov
                continue
            if not isinstance(number, (int, float)) or not 0 <= number < math.inf:
                raise UserInputError(f"DeepSpeed config {path!r}: optimizer {key} must be a finite number "
                                     f">= 0, got {value!r}")


def resolve_ds_config(config: dict, world_size: int, cuda: bool, log: Callable[[str], None] = print) -> dict:
    """The config DeepSpeed gets: batch sizes checked against the world, bf16 per device.

    train_batch_size = micro_batch * gradient_accumulation_steps * world_size must hold;
    a missing micro-batch becomes train_batch_size / (gas * world_size).
    """
    resolved = copy.deepcopy(config)
    total = int(resolved["train_batch_size"])
    gas = int(resolved.get("gradient_accumulation_steps", 1))
    micro = resolved.get("train_micro_batch_size_per_gpu")
    if micro is None:
        if total % (gas * world_size):
            raise UserInputError(f"train_batch_size {total} does not divide by gradient_accumulation_steps "
                                 f"{gas} x world size {world_size}")
        micro = total // (gas * world_size)
    micro = int(micro)
    if "gradient_accumulation_steps" not in resolved:
        if total % (micro * world_size):
            raise UserInputError(f"train_batch_size {total} does not divide by train_micro_batch_size_per_gpu "
                                 f"{micro} x world size {world_size}")
        gas = total // (micro * world_size)
    if micro * gas * world_size != total:
        raise UserInputError(f"ds.json says train_batch_size {total}, but train_micro_batch_size_per_gpu "
                             f"{micro} x gradient_accumulation_steps {gas} x world size {world_size} = "
                             f"{micro * gas * world_size}")
    resolved.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=gas)
    if not cuda and resolved.get("bf16", {}).get("enabled"):
        log("bf16 is switched off: no CUDA device (CPU training runs in float32)")
        resolved["bf16"] = {**resolved["bf16"], "enabled": False}
    if "optimizer" not in resolved:
        raise UserInputError("ds.json has no optimizer section (expected SGD with lr, momentum, weight_decay)")
    return resolved


def init_distributed() -> None:
    """Join the process group (gloo on a CPU, nccl on GPUs; DeepSpeed picks).

    A plain `python launch/train_repr.py` has no launcher variables: it becomes a
    world of one on localhost.
    """
    import deepspeed

    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    deepspeed.init_distributed()
    _unlink_shm_segment()


def _unlink_shm_segment() -> None:
    """Remove this rank's /dev/shm segment of DeepSpeed's CPU all-reduce once every rank mapped it.

    DeepSpeed never unlinks these 69 MB files; a later run on the same address and port
    (a resume after SIGKILL, say) would map the stale ones and corrupt or hang its
    collectives. After the barrier every peer holds its mapping, so unlinking is safe.
    """
    import torch.distributed as dist

    dist.barrier()
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ['MASTER_ADDR']}_"
            f"{os.environ['MASTER_PORT']}_{os.environ['RANK']}")
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except OSError:  # no shared-memory op on this platform, or another node's rank
        pass


def cosine_schedule(total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step s: 0.5 (1 + cos(pi s / S)), 1 -> 0."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def epoch_cosine_schedule(steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """Multiplier at optimizer step s, held for a whole epoch: 0.5 (1 + cos(pi t / T)), t = s // steps_per_epoch.

    The official stage-2 schedule (CosineAnnealingLR over T epochs, eta_min 0, stepped once per epoch).
    """
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step // max(steps_per_epoch, 1), epochs) / max(epochs, 1)))


def initialize(model: torch.nn.Module, ds_config: dict, total_steps: int, log: Callable[[str], None] = print,
               schedule: Callable[[int], float] | None = None):
    """DeepSpeed engine for the model; cosine decay to 0 over total_steps unless ds.json has a scheduler.

    Only parameters with requires_grad reach the optimizer (a frozen backbone is no
    optimizer state); schedule, when given, replaces the per-step cosine multiplier.
    """
    import deepspeed
    import torch

    scheduler = None
    if "scheduler" in ds_config:
        log(f"using ds.json's scheduler {ds_config['scheduler'].get('type')}")
    else:
        multiplier = schedule or cosine_schedule(total_steps)
        scheduler = lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=trainable,
                                           lr_scheduler=scheduler, config=ds_config)
    return engine


def save_checkpoint(engine, folder: str, tag: str, client_state: dict) -> None:
    """Collective: every rank writes its part under folder/tag, rank 0 records the files'
    sizes and sha256 (lt_manifest.json), then `latest` names tag.

    DeepSpeed's own `latest` is written by rank 0 before the closing barrier, so a
    crash can leave it naming a tag whose other ranks' files are half written (a
    resume then fails on a truncated zip). Here `latest` moves only after every rank
    has finished and rank 0 has flushed the tag's files to disk.
    """
    import shutil

    import torch.distributed as dist

    from lt_dist.engine.checkpoint import FULL_ZERO_STATE, write_tag_manifest

    tag_dir = os.path.join(folder, tag)
    if dist.get_rank() == 0 and os.path.isdir(tag_dir):  # a torn save of this tag before a crash
        shutil.rmtree(tag_dir)
    dist.barrier()
    engine.save_checkpoint(folder, tag=tag, client_state=client_state, save_latest=False)
    save_full_zero_state(engine, os.path.join(tag_dir, FULL_ZERO_STATE))
    # The page cache is per node: one process per node flushes what that node wrote.
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        sync_folder(tag_dir)
    dist.barrier()
    if dist.get_rank() == 0:
        # sizes and hashes of what every rank wrote (on a shared file system: all of it),
        # so a resume can tell a complete tag from a torn or damaged one
        write_tag_manifest(tag_dir)
        _fsync_path(tag_dir)
        commit_latest(folder, tag)
    dist.barrier()


def sync_folder(path: str) -> None:
    """fsync every file directly in path, then path itself."""
    for name in sorted(os.listdir(path)):
        if os.path.isfile(os.path.join(path, name)):
            _fsync_path(os.path.join(path, name))
    _fsync_path(path)


def commit_latest(folder: str, tag: str) -> None:
    """Point folder/latest at tag by temp file + fsync + rename (readers see old or new, never half)."""
    temp = os.path.join(folder, f"latest.tmp-{os.getpid()}")
    with open(temp, "w", encoding="utf-8") as handle:
        handle.write(tag)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, os.path.join(folder, "latest"))
    _fsync_path(folder)


def _fsync_path(path: str) -> None:
    """Flush a file's (or a directory's entries') dirty pages to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def load_checkpoint(engine, folder: str, tag: str | None = None, regather: bool | None = None) -> dict | None:
    """Collective: load folder/tag (tag None: the one `latest` names); the client state or None.

    ZeRO 1/2 state saved on another number of ranks (or regather=True) comes from the
    tag's FULL_ZERO_STATE: DeepSpeed loads the module, lr scheduler and client state, and
    restore_full_zero_state re-partitions masters and optimizer state over this world.
    """
    import glob

    import torch.distributed as dist

    from lt_dist.engine.checkpoint import FULL_ZERO_STATE

    if tag is None:
        if not os.path.isfile(os.path.join(folder, "latest")):
            return None
        with open(os.path.join(folder, "latest"), encoding="utf-8") as handle:
            tag = handle.read().strip()
    saved_ranks = len(glob.glob(os.path.join(folder, tag, "*zero_pp_rank_*_optim_states.pt")))
    if regather is None:
        regather = engine.zero_optimization_stage() in (1, 2) and saved_ranks not in (0, dist.get_world_size())
    if not regather:
        path, client_state = engine.load_checkpoint(folder, tag=tag)
        return client_state if path is not None else None
    path, client_state = engine.load_checkpoint(folder, tag=tag, load_optimizer_states=False)
    if path is None:
        return None
    restore_full_zero_state(engine, os.path.join(folder, tag, FULL_ZERO_STATE))
    return client_state


def _optimizer_state_keys(engine) -> list[str]:
    """Names of the base optimizer's per-element state (SGD: momentum_buffer; Adam: exp_avg,
    exp_avg_sq); empty before the first step. The same on every rank."""
    import torch

    state = engine.optimizer.optimizer.state_dict()["state"]
    return sorted({key for values in state.values() for key, value in values.items()
                   if torch.is_tensor(value) and value.dim() > 0})


def save_full_zero_state(engine, path: str) -> None:
    """Collective, ZeRO 1/2 only: write {parameter name: {"fp32": master, key: optimizer state}},
    each tensor whole (the parameter's shape), gathered with DeepSpeed's safe_get_full_* API,
    and the optimizer's parameter-group hyper-parameters (lr, momentum, ...).

    Rank 0 writes it (temp + rename); it costs one all-reduce per parameter and state and
    a file of (1 + number of state keys) x 4 bytes per parameter."""
    import torch
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    if engine.zero_optimization_stage() not in (1, 2):
        return
    keys = _optimizer_state_keys(engine)
    full: dict[str, dict] = {}
    for name, param in engine.module.named_parameters():
        if not param.requires_grad:
            continue
        tensors = {"fp32": safe_get_full_fp32_param(param)}
        tensors.update((key, safe_get_full_optimizer_state(param, key)) for key in keys)
        full[name] = {key: value.detach().cpu() for key, value in tensors.items()}
    if dist.get_rank() == 0:
        temp = f"{path}.tmp-{os.getpid()}"
        groups = [{key: value for key, value in group.items() if key != "params"}  # lr, momentum, ...
                  for group in engine.optimizer.optimizer.param_groups]
        torch.save({"keys": keys, "parameters": full, "param_groups": groups}, temp)
        os.replace(temp, path)


def restore_full_zero_state(engine, path: str) -> None:
    """Collective, ZeRO 1/2: put save_full_zero_state's tensors into this world's partitions
    (safe_set_full_fp32_param / safe_set_full_optimizer_state)."""
    import torch
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    if not os.path.isfile(path):
        raise UserInputError(f"--resume on another world size needs {path}, which is missing")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    zero_optimizer = engine.optimizer
    # the hyper-parameters as saved (the lr of the step reached, not the config's initial one)
    for group, saved_group in zip(zero_optimizer.optimizer.param_groups, saved["param_groups"], strict=True):
        group.update(saved_group)
    if saved["keys"]:
        # SGD and Adam create their state at the first step; DeepSpeed links each parameter's
        # view of it (its "fragment") only then. Create it here, zero-filled, and link it.
        base = zero_optimizer.optimizer
        for group in base.param_groups:
            for flat in group["params"]:
                for key in saved["keys"]:
                    base.state[flat][key] = torch.zeros_like(flat)
        zero_optimizer._lazy_init_hp_params_optimizer_state()
    for name, param in engine.module.named_parameters():
        if not param.requires_grad:
            continue
        tensors = saved["parameters"][name]
        safe_set_full_fp32_param(param, tensors["fp32"].to(param.device))
        for key in saved["keys"]:
            safe_set_full_optimizer_state(param, tensors[key].to(param.device), key)


def current_lr(engine) -> float:
    """Learning rate of the first parameter group."""
    return float(engine.get_lr()[0])
