"""Stage 2 as Ray Tune trials: every method and setting on stored features, chosen on val.

    python tune/search_stage2.py --features features/NAME [--out results/NAME]
        [--methods joint,ncm,crt,tau_norm,lws] [--taus 0,0.5,1] [--select-on val|train]
        [--address auto | HOST:PORT] [--num-cpus 8] [--resume]
By default a local Ray starts; --address joins an existing cluster. Each trial fits on
train and scores val (never test); crashed trials are retried; an interrupted search
continues with --resume. Afterwards each method's chosen setting is refitted once and
scored on test, and results/NAME/ gets trials.parquet, best.json, table.md/csv and
the figures. Ray is imported here only.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys

from lt_dist.errors import OneLineArgumentParser, UserInputError
from lt_dist.optional import require

DEFAULT_METHODS = "joint,ncm,crt,tau_norm,lws,learned_tau,cosine"  # the paper's
# published after the paper (lt_dist/stage2/later.py); typed here so --help imports no torch,
# tests/test_search_stage2.py keeps the two equal to METHODS
LATER_METHODS = "logit_adjust,balanced_softmax,label_aware_smoothing,wb,disalign"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="search_stage2", description=__doc__, add_help=add_help,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="settings from a YAML/JSON file (keys: flag names, "
                        "lists for --methods/--taus, a mapping for --set); flags override")
    parser.add_argument("--features", required=True, help="features/NAME written by `lt_dist extract`")
    parser.add_argument("--out", help="results folder (default: results/<NAME of --features>)")
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated, or 'all' (default: %(default)s, the paper's); after the paper: "
                        f"{LATER_METHODS.replace(',', ', ')} (docs/METHOD.md)")
    parser.add_argument("--taus", help="tau grid for tau_norm and logit_adjust, comma-separated (default: 0.0, 0.1, "
                        "..., 2.0)")
    parser.add_argument("--lrs", help="learning rates for crt/lws/learned_tau/cosine/balanced_softmax (default: each "
                        "method's grid)")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE",
                        help="fix a parameter in every trial of a method, repeatable: crt.epochs=30, "
                        "lws.batch_size=256 (iNaturalist: crt.epochs=30)")
    parser.add_argument("--select-on", default="val", choices=("val", "train"),
                        help="val split, or the training set's balanced per-class estimate (paper B.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every trial")
    parser.add_argument("--address", help="join a running Ray cluster: 'auto' or HOST:PORT (default: start one)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--cpus-per-trial", type=float, default=1, help="CPUs each trial holds (default: 1)")
    parser.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs each trial holds (default: 0)")
    parser.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial (default: 2)")
    parser.add_argument("--storage", help="Ray Tune's storage_path: a folder every node sees, or a bucket URL "
                        "(s3://, gs://); a multi-node cluster needs one of these (default: OUT/ray)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted search in the storage "
                        "(Ctrl-C keeps finished trials there and exits 130)")
    parser.add_argument("--no-progress", action="store_true", help="no line per finished trial")
    parser.add_argument("--verbose", action="store_true", help="Ray's own start-up messages and trial tables")
    return parser


def _floats(text: str | None, flag: str, low: float, low_open: bool = False) -> list[float] | None:
    """Comma-separated finite numbers >= low (> low when low_open); None when the flag is absent."""
    if text is None:
        return None
    try:
        values = [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise UserInputError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise UserInputError(f"{flag} is empty ({text!r}): give at least one number, or leave the flag out")
    for value in values:
        if not math.isfinite(value) or value < low or (low_open and value == low):
            raise UserInputError(f"{flag}: {value} must be a finite number {'>' if low_open else '>='} {low:g}")
    return values


# Bounds of the search's numbers: beyond them a value is a mistake (and -1 retries would never end).
MAX_FAILURES, MAX_CPUS, MAX_GPUS = 100, 4096, 1024


def check_numbers(args) -> None:
    """Counts and resource requests are whole/finite numbers within bounds, before Ray starts."""
    from lt_dist.config import check_int

    try:
        check_int("--seed", args.seed, 0, 2**32 - 1)
        check_int("--max-failures", args.max_failures, 0, MAX_FAILURES)
        if args.num_cpus is not None:
            check_int("--num-cpus", args.num_cpus, 1, MAX_CPUS)
    except ValueError as error:
        raise UserInputError(str(error)) from None
    for flag, value, low_open, high in (("--cpus-per-trial", args.cpus_per_trial, True, MAX_CPUS),
                                        ("--gpus-per-trial", args.gpus_per_trial, False, MAX_GPUS)):
        if not math.isfinite(value) or value < 0 or (low_open and value == 0) or value > high:
            raise UserInputError(f"{flag} must be a number in {'(' if low_open else '['}0, {high}], got {value}")
    local_cpus = args.num_cpus or os.cpu_count() or 1
    if not args.address and args.cpus_per_trial > local_cpus:
        raise UserInputError(f"--cpus-per-trial {args.cpus_per_trial:g} is more than the local Ray's "
                             f"{local_cpus} CPUs (--num-cpus): no trial could ever start")


def check_cluster(cpus_per_trial: float, gpus_per_trial: float, resources: dict) -> None:
    """Refuse a trial shape the running cluster cannot place (Ray would wait for it forever)."""
    for name, asked, flag in (("CPU", cpus_per_trial, "--cpus-per-trial"), ("GPU", gpus_per_trial, "--gpus-per-trial")):
        has = float(resources.get(name, 0))
        if asked > has:
            raise UserInputError(f"{flag} {asked:g} but the Ray cluster has {has:g} {name}s in all: no trial "
                                 f"could ever start")


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """["crt.epochs=30"] -> {"crt": {"epochs": 30}} (ints, floats, true/false, else text)."""
    overrides: dict[str, dict] = {}
    for item in items:
        key, sep, text = item.partition("=")
        method, dot, param = key.partition(".")
        if not (sep and dot and method and param):
            raise UserInputError(f"--set takes METHOD.PARAM=VALUE, got {item!r}")
        value: object = text
        for convert in (int, float):
            try:
                value = convert(text)
                break
            except ValueError:
                continue
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        overrides.setdefault(method, {})[param] = value
    return overrides


def check_address(address: str) -> None:
    """Fail fast, naming the address, when HOST:PORT does not answer ("auto" is Ray's to resolve)."""
    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            return
    except (OSError, ValueError):
        raise UserInputError(f"Ray address {address!r} does not answer (expected HOST:PORT of a running "
                             f"cluster's head, or 'auto')") from None


def prepare(args) -> tuple[list[dict], str]:
    """Checks before Ray starts: features readable and consistent, trials valid; returns (trials, out)."""
    check_numbers(args)  # before the imports below (torch): a typo costs no start-up
    out = args.out or os.path.join("results", os.path.basename(os.path.normpath(args.features)))
    check_results_folder(out, args.resume)
    overrides = parse_overrides(args.set)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise UserInputError(f"--methods is empty ({args.methods!r}); choose from {DEFAULT_METHODS},{LATER_METHODS}")
    if methods == ["all"]:
        methods = f"{DEFAULT_METHODS},{LATER_METHODS}".split(",")
    taus, lrs = _floats(args.taus, "--taus", 0.0), _floats(args.lrs, "--lrs", 0.0, low_open=True)
    from lt_dist.stage2.methods import resolve_params
    from lt_dist.stage2.search import check_select_on, trial_list
    from lt_dist.stage2.store import load_features

    splits, _ = load_features(args.features)
    try:
        check_select_on(args.select_on, "val" in splits)
        trials = trial_list(methods, taus, lrs)
        for trial in trials:
            trial["params"].update(overrides.get(trial["method"], {}))
            resolved = resolve_params(trial["method"], trial["params"])  # unknown parameter names fail here
            if resolved.get("keep_best") and "val" not in splits:
                raise ValueError(f"--set {trial['method']}.keep_best=true keeps the best epoch on val, and "
                                 f"{args.features} has no val.arrow")
        unused = set(overrides) - {trial["method"] for trial in trials}
        if unused:
            raise ValueError(f"--set names method {sorted(unused)[0]!r}, which this search does not run")
    except ValueError as error:
        raise UserInputError(str(error)) from None
    return trials, os.path.abspath(out)


def check_results_folder(out: str, resume: bool) -> None:
    """A results folder that already holds a search is continued only with --resume, never overwritten."""
    from lt_dist.outputs import check_output_folder

    check_output_folder(out, "--out")
    held = [name for name in ("table.csv", "trials.parquet", os.path.join("ray", "stage2"))
            if os.path.exists(os.path.join(out, name))]
    if held and not resume:
        raise UserInputError(f"--out {out!r} already holds a search ({held[0]}): pass --resume to continue "
                             f"it, or choose another --out")


SOURCE = "features_source.json"


PLAN = "search_plan.json"


def pin_plan(out: str, trials: list[dict], seed: int, select_on: str, resume: bool) -> None:
    """Record the trials a search begins with; a --resume that asks for others is refused
    (Ray restores the grid it began with, so other methods or grids would be dropped silently)."""
    plan = {"trials": [{"method": t["method"], "params": t["params"]} for t in trials], "seed": seed,
            "select_on": select_on}
    path = os.path.join(out, PLAN)
    if resume and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as handle:
                pinned = json.load(handle)
            pinned["trials"], pinned["seed"], pinned["select_on"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserInputError(f"{path!r} is unreadable: cannot tell which trials the search began with") from None
        if json.loads(json.dumps(plan)) != pinned:
            def summary(p: dict) -> str:
                methods = sorted({t["method"] for t in p["trials"]})
                count = len(p["trials"])
                return f"{count} trial{'s' * (count != 1)} of {', '.join(methods)}, seed {p['seed']}, on {p['select_on']}"
            raise UserInputError(f"--resume continues the search as it began ({summary(pinned)}); this command "
                                 f"asks for {summary(plan)}: repeat its flags, or choose another --out")
        return
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(plan, handle, indent=1)


def pin_features(out: str, features: str, resume: bool) -> None:
    """Record which features a search runs on; a --resume on other features is refused.

    The identity is the checkpoint sha256 in features.json (or, for folders written by
    other tools, the classifier file's sha256), so trials of two checkpoints never meet.
    """
    import hashlib

    from lt_dist.stage2.store import CLASSIFIER, read_index

    index = read_index(features) or {}
    with open(os.path.join(features, CLASSIFIER), "rb") as handle:
        identity = index.get("ckpt_sha256") or hashlib.sha256(handle.read()).hexdigest()
    path = os.path.join(out, SOURCE)
    if resume and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as handle:
                pinned = json.load(handle)["identity"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserInputError(f"{path!r} is unreadable: cannot tell which features the search ran on") from None
        if pinned != identity:
            raise UserInputError(f"--resume: the search in {out!r} ran on features of sha256 {str(pinned)[:12]}, "
                                 f"{features!r} now holds {identity[:12]}: choose another --out")
        return
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"features": os.path.abspath(features), "identity": identity}, handle, indent=1)


def _trial(config: dict) -> None:
    """One Ray Tune trial: fit, score val, report (runs in a Ray worker)."""
    import torch
    from ray import tune

    from lt_dist.stage2.search import run_trial

    torch.set_num_threads(max(1, int(config["cpus"])))
    import ray

    trial = config["trial"]
    metrics = run_trial(config["features"], trial["method"], trial["params"], config["seed"], config["select_on"])
    # Ray adds hostname and node_ip to every row; two raylets on one host share both, the node id tells them apart
    tune.report({**metrics, "ray_node_id": ray.get_runtime_context().get_node_id()})


def storage_path(storage: str | None, out: str) -> str:
    """Where Ray Tune keeps the experiment: a URL as given, a path made absolute (default OUT/ray)."""
    if storage is None:
        return os.path.join(out, "ray")
    if "://" in storage:
        return storage  # s3://, gs://, file://: pyarrow's file systems, resolved by Ray on every node
    return os.path.abspath(storage)


def trial_lines(total: int, quiet: bool):
    """A Ray Tune callback printing one line per finished trial (Ray's own tables stay off: verbose=0)."""
    from ray import tune

    class TrialLines(tune.Callback):
        finished = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.finished += 1
            result, chosen = trial.last_result or {}, (trial.config or {}).get("trial", {})
            if quiet or "val_all" not in result:
                return
            print(f"trial {self.finished}/{total}: {chosen.get('method')} {json.dumps(chosen.get('params'))} "
                  f"val all {result['val_all']:.2f} few {result['val_few']:.2f} ({result['seconds']:.1f} s)",
                  flush=True)

        def on_trial_recover(self, iteration, trials, trial, **info):
            chosen = (trial.config or {}).get("trial", {})
            print(f"trial errored, retrying: {chosen.get('method')} {json.dumps(chosen.get('params'))}",
                  file=sys.stderr, flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            chosen = (trial.config or {}).get("trial", {})
            print(f"trial errored after --max-failures retries: {chosen.get('method')} "
                  f"{json.dumps(chosen.get('params'))}", file=sys.stderr, flush=True)

    return TrialLines()


def run_search(args, trials: list[dict], out: str) -> list[dict]:
    """Start or join Ray, run every trial (retrying crashes), return the finished trials' metrics."""
    import ray
    from ray import tune

    if args.address:
        check_address(args.address)
        try:
            ray.init(address=args.address, log_to_driver=False,
                     logging_level=logging.INFO if args.verbose else logging.ERROR)
        except ConnectionError as error:
            raise UserInputError(f"cannot join Ray at {args.address!r}: {error}") from None
    else:  # "local": a new Ray of our own, never a cluster some other job left in /tmp/ray/ray_current_cluster
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.INFO if args.verbose else logging.ERROR)
    if not args.verbose:  # Tune's "wrote result files" and start-up notes; the trial lines say what matters
        logging.getLogger("ray").setLevel(logging.ERROR)
    try:
        check_cluster(args.cpus_per_trial, args.gpus_per_trial, ray.cluster_resources())
    except UserInputError:
        ray.shutdown()
        raise
    trainable = tune.with_resources(_trial, {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})
    storage, name = storage_path(args.storage, out), "stage2"
    experiment = f"{storage.rstrip('/')}/{name}"
    if args.resume and tune.Tuner.can_restore(experiment):
        print(f"resuming the search in {experiment}: finished trials are kept, the others run", flush=True)
        tuner = tune.Tuner.restore(experiment, trainable, resume_errored=True)
    else:
        space = {"trial": tune.grid_search(trials), "features": os.path.abspath(args.features),
                 "seed": args.seed, "select_on": args.select_on, "cpus": args.cpus_per_trial}
        tuner = tune.Tuner(trainable, param_space=space, tune_config=tune.TuneConfig(reuse_actors=True),
                           run_config=tune.RunConfig(name=name, storage_path=storage, verbose=2 if args.verbose else 0,
                                                     callbacks=[trial_lines(len(trials), args.no_progress)],
                                                     failure_config=tune.FailureConfig(max_failures=args.max_failures)))
    try:
        grid = tuner.fit()  # Ctrl-C: KeyboardInterrupt from here (Ray's own handler is off, see main)
    finally:
        _shutdown_quietly(started_here=not args.address)
    failed = [result for result in grid if result.error is not None]
    for result in failed:
        print(f"trial failed after retries: {result.config.get('trial')}: {result.error}", file=sys.stderr)
    return [dict(result.metrics) for result in grid if result.error is None and "selection_score" in result.metrics]


def _shutdown_quietly(started_here: bool) -> None:
    """Stop the local Ray (or leave the cluster); a Ctrl-C during it changes nothing.

    A Ray this script started leaves its session folder (logs, sockets) under the
    system temp dir, one per search: it is removed here (the results live in --storage).
    """
    import shutil

    import ray

    session = None
    if started_here:
        try:  # private but stable since Ray 1.x; without it the folder just stays
            session = ray._private.worker._global_node.get_session_dir_path()
        except AttributeError:
            session = None
    try:
        ray.shutdown()
    except KeyboardInterrupt:
        pass
    if session and os.path.basename(session).startswith("session_"):
        shutil.rmtree(session, ignore_errors=True)
        latest = os.path.join(os.path.dirname(session), "session_latest")
        if os.path.islink(latest) and os.path.realpath(latest) == os.path.realpath(session):
            os.remove(latest)


def main(argv: list[str] | None = None) -> int:
    from lt_dist.config_file import parse_with_config

    args = parse_with_config(get_args_parser(), argv)
    # Ray Tune's own Ctrl-C handler prints its restore hint and hands back a partial grid;
    # lt-dist's is one line naming --resume, with trials.parquet written whole or not at all.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    if not args.verbose:  # the legacy reporter honours verbose=0; the new one prints its boxes regardless
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    try:
        require("ray", "tune/search_stage2.py")
        trials, out = prepare(args)
        os.makedirs(out, exist_ok=True)
        pin_features(out, args.features, args.resume)
        pin_plan(out, trials, args.seed, args.select_on, args.resume)
        try:
            results = run_search(args, trials, out)
        except KeyboardInterrupt:  # Ray was shut down on the way out of run_search
            print(f"search_stage2: interrupted; finished trials are kept in {storage_path(args.storage, out)}; "
                  f"the same command with --resume continues", file=sys.stderr, flush=True)
            return 130
        if not results:
            raise UserInputError("every trial failed; see the errors above")
        from lt_dist.report.results import write_results

        table = write_results(out, args.features, results, args.seed, args.select_on)
    except UserInputError as error:
        print(f"search_stage2: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a folder that vanished or filled up mid-way: name the path, no traceback
        print(f"search_stage2: error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
    print(table)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
