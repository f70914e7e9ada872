"""--config FILE: values from YAML/JSON, flags override, unknown keys refused by name, fast."""
import json
import subprocess
import sys

import pytest

from conftest import REPO
from lt_dist.config_file import load_config_file, parse_with_config, resolve_default_path

sys.path.insert(0, str(REPO / "launch"))
from train_repr import get_args_parser, parse_args  # noqa: E402


def test_yaml_values_are_defaults_and_flags_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("data: shards/x\nout: runs/x\narch: resnet50\nloss: focal\nloss_params: {gamma: 1.5}\n"
                      "small-input: true\nepochs: 7\n")
    args = parse_args(["--config", str(config), "--epochs", "3"])
    assert (args.data, args.arch, args.small_input, args.loss_param) == ("shards/x", "resnet50", True, [("gamma", 1.5)])
    assert args.epochs == 3  # the flag wins over the file
    assert parse_args(["--config", str(config)]).epochs == 7


def test_config_json_of_a_run_is_read_with_its_sections_and_recorded_facts(tmp_path):
    written = {"train": {"data": "d", "out": "o", "epochs": 2, "loss_params": {}, "ckpt_minutes": 30.0},
               "deepspeed": {"train_batch_size": 16}, "world_size": 2, "class_names": ["a"]}
    (tmp_path / "config.json").write_text(json.dumps(written))
    args = parse_args(["--config", str(tmp_path / "config.json")])
    assert (args.data, args.epochs, args.ds_config) == ("d", 2, {"train_batch_size": 16})


@pytest.mark.parametrize("text, message", [
    ("data: d\nout: o\nepoch: 3\n", "unknown key 'epoch'; accepted: "),
    ("data: d\nsmall_input: yes please\n", "small_input must be true or false"),
    ("- a\n- b\n", "must hold a mapping"),
    ("data: [\n", "is not valid YAML"),
])
def test_bad_files_end_in_exit_2_and_one_line_naming_the_key(tmp_path, capsys, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(SystemExit) as stop:
        parse_with_config(get_args_parser(), ["--config", str(tmp_path / "c.yaml")])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and ": error: --config " in error


def test_a_missing_file_is_named():
    with pytest.raises(ValueError, match="--config 'nope.json': No such file"):
        load_config_file("nope.json")


def test_default_ds_config_is_found_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_default_path("launch/ds.json", "launch/ds.json", str(REPO)) == str(REPO / "launch" / "ds.json")
    assert resolve_default_path("mine.json", "launch/ds.json", str(REPO)) == "mine.json"  # a user's path is kept


def test_search_reads_lists_and_set_mappings_from_a_file(tmp_path):
    sys.path.insert(0, str(REPO / "tune"))
    from search_stage2 import get_args_parser as search_parser

    (tmp_path / "s.json").write_text(json.dumps({"features": "f", "methods": ["crt", "lws"], "taus": [0, 0.5],
                                                 "set": {"crt.epochs": 30}}))
    args = parse_with_config(search_parser(), ["--config", str(tmp_path / "s.json"), "--seed", "4"])
    assert (args.features, args.methods, args.taus, args.set, args.seed) == ("f", "crt,lws", "0,0.5",
                                                                           ["crt.epochs=30"], 4)


def test_an_unknown_arch_from_a_config_file_fails_before_torch_is_imported(tmp_path):
    (tmp_path / "c.yaml").write_text("data: d\nout: o\narch: resnet19\n")
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'launch')!r}); import train_repr; "
            f"code = train_repr.main(['--config', {str(tmp_path / 'c.yaml')!r}]); "
            f"print(code, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["2", "False"], result.stderr
    assert "unknown arch 'resnet19'" in result.stderr
