"""launch/benchmarks/*.sh: every command parses with the entry point's own parser, names a preset
and arch that exist, and its ds.json resolves; the stage-2 settings are the official ones."""
import shlex
import subprocess
import sys

import pytest

from conftest import REPO
from lt_dist.data.presets import PRESETS
from lt_dist.engine import ds
from lt_dist.models.resnet import MODELS

RECIPES = sorted((REPO / "launch" / "benchmarks").glob("*.sh"))
sys.path.insert(0, str(REPO / "launch"))
import train_classifier  # noqa: E402
import train_repr  # noqa: E402

sys.path.pop(0)


def commands(path):
    """(script name, argv after the script) of every deepspeed command, variables given sample values."""
    text = path.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.startswith("deepspeed "):
            words = shlex.split(line.replace('"$GPUS"', "8").replace('"$EPOCHS"', "200")
                                .replace('"$PRETRAINED"', "pretrained.pth"))
            script = next(i for i, w in enumerate(words) if w.startswith("launch/"))
            found.append((words[script], words[script + 1:]))
    return found


def test_there_is_a_recipe_per_benchmark():
    assert [p.name for p in RECIPES] == ["imagenet_lt.sh", "inat2018.sh", "places_lt.sh"]
    for path in RECIPES:
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_command_parses_and_its_config_resolves(path):
    stage2 = {}
    for script, argv in commands(path):
        parser = {"launch/train_repr.py": train_repr, "launch/train_classifier.py": train_classifier}[script]
        args = parser.get_args_parser().parse_args(argv)
        config = ds.resolve_ds_config(ds.load_ds_config(str(REPO / args.ds_config)), 8, True, lambda line: None)
        if script.endswith("train_repr.py"):
            assert args.arch in MODELS and {args.train_preset, args.eval_preset} <= set(PRESETS)
            if "inat" in path.name:
                assert config["optimizer"]["params"]["weight_decay"] == 1e-4
                assert args.train_preset == "inat_train"
        else:
            stage2[args.method] = (args.epochs, config["train_batch_size"], config["optimizer"]["params"]["lr"])
    # the official configs (classifier-balancing/config/*/cls_{crt,lws}.yaml)
    official = {"imagenet_lt.sh": {"crt": (10, 512, 0.2), "lws": (5, 512, 0.2)},
                "inat2018.sh": {"crt": (30, 512, 0.2), "lws": (5, 512, 0.2)},
                "places_lt.sh": {"crt": (10, 256, 0.1), "lws": (5, 256, 0.1)}}
    assert stage2 == official[path.name]
