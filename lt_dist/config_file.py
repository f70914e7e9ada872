"""`--config FILE` for the entry points: values from a YAML or JSON file, flags override.

A key is a flag's name (`ckpt_every` or `ckpt-every`) or a field of the run config a
script writes (config.json's "train" section: `loss_params` for `--loss-param`), so
the config.json of a run can be passed back to repeat it. Unknown keys are refused
by name, before anything heavy is imported.
    # -> file: {"arch": "resnet50", "loss": "focal", "loss_params": {"gamma": 2}, ...}
"""
from __future__ import annotations

import argparse
import json
import os


def load_config_file(path: str) -> dict:
    """The mapping in a .yaml/.yml or .json file; ValueError (one line) when unreadable or not a mapping."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ValueError(f"--config {path!r}: {error.strerror}") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml  # PyYAML: only when a YAML file is given

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as error:  # yaml.YAMLError / json.JSONDecodeError: say where, in one line
        raise ValueError(f"--config {path!r} is not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: "
                         f"{str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path!r} must hold a mapping of setting names to values")
    return values


def _to_flag_value(action: argparse.Action, key: str, value, path: str):
    """A file value in the form the parser would have produced from the command line."""
    if action.dest == "loss_param" and isinstance(value, dict):
        return [(name, item) for name, item in value.items()]
    if isinstance(value, list) and not isinstance(action, argparse._AppendAction):
        return ",".join(str(item) for item in value)  # --methods, --taus: comma-separated on the command line
    if isinstance(action, argparse._AppendAction) and isinstance(value, dict):  # --set as {"crt.epochs": 30}
        return [f"{name}={item}" for name, item in value.items()]
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) and not isinstance(value, bool):
        raise ValueError(f"--config {path!r}: {key} must be true or false, got {value!r}")
    if action.type is not None and isinstance(value, str) and not isinstance(action, argparse._AppendAction):
        return action.type(value)
    return value


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None, aliases: dict[str, str] | None = None,
                      ignored: tuple[str, ...] = (), sections: tuple[str, ...] = ()) -> argparse.Namespace:
    """parser.parse_args(argv) where `--config FILE` supplies defaults and flags override them.

    aliases map file keys to parser dests (e.g. "loss_params" -> "loss_param"); keys in
    `ignored` are recorded facts (world size, class names) that a file may hold; the
    mappings under `sections` (config.json's "train") are read as top-level keys. An
    unknown key exits 2 with one line naming it, as argparse does for a bad flag.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config is None:
        return parser.parse_args(argv)
    try:
        values = load_config_file(known.config)
        for section in sections:
            if isinstance(values.get(section), dict):
                values = {**values.pop(section), **values}
        defaults = file_defaults(parser, values, known.config, aliases or {}, ignored)
    except ValueError as error:
        parser.error(str(error))
    for action in parser._actions:  # a required flag the file gives is no longer required
        if action.dest in defaults:
            action.required = False
    parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def file_defaults(parser: argparse.ArgumentParser, values: dict, path: str, aliases: dict[str, str],
                  ignored: tuple[str, ...]) -> dict:
    """{dest: value} for parser.set_defaults; ValueError naming the first unknown key."""
    actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}
    defaults = {}
    for key, value in values.items():
        if key in ignored:
            continue
        dest = aliases.get(key, key.replace("-", "_"))
        if dest not in actions or actions[dest].help == argparse.SUPPRESS:
            accepted = sorted(set(actions) - {d for d, a in actions.items() if a.help == argparse.SUPPRESS})
            raise ValueError(f"--config {path!r}: unknown key {key!r}; accepted: {', '.join(accepted)}")
        defaults[dest] = _to_flag_value(actions[dest], key, value, path)
    return defaults


def resolve_default_path(value: str, default: str, base: str) -> str:
    """A default relative path (such as launch/ds.json) found from any folder: relative to `base` when the
    current folder does not have it. A path the user gave is never changed."""
    if value == default and not os.path.exists(value):
        candidate = os.path.join(base, value)
        if os.path.exists(candidate):
            return candidate
    return value
