"""config.validate / resolve_head, and the flag refusal of train_repr (no process group needed)."""
import pytest

from lt_dist.config import TrainConfig, resolve_head, validate


def test_ldam_defaults_to_a_cosine_head_of_scale_one():
    assert resolve_head(TrainConfig(data="d", out="o", loss="ldam")) == ("cosine", 1.0)
    assert resolve_head(TrainConfig(data="d", out="o")) == ("linear", None)
    assert resolve_head(TrainConfig(data="d", out="o", head="cosine")) == ("cosine", 16.0)


def test_ldam_with_a_linear_head_is_refused_naming_both_flags():
    with pytest.raises(ValueError, match="--head linear.*--loss ldam"):
        validate(TrainConfig(data="d", out="o", loss="ldam", head="linear"))


def test_train_repr_exits_2_with_one_line(tmp_path, capsys):
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "launch"))
    try:
        import train_repr
    finally:
        sys.path.pop(0)
    code = train_repr.main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--loss", "ldam",
                            "--head", "linear"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "--head linear" in error[0] and "--loss ldam" in error[0]


def test_no_jitter_switches_the_train_presets_jitter_off():
    from lt_dist.engine.stage1 import build_loaders
    from lt_dist.dist import World
    import numpy as np

    facts = {"train_dir": "unused", "val_dir": None, "test_dir": None, "counts": np.array([5, 3])}
    for no_jitter, expected in ((False, 0.4), (True, 0.0)):
        config = TrainConfig(data="d", out="o", no_jitter=no_jitter, decoder="torchvision")
        train, _, _ = build_loaders(config, facts, World(), 4)
        assert train.config.preset.color_jitter == expected and train.config.preset.name == "imagenet_train"


def test_train_repr_flags_reach_the_config():
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "launch"))
    try:
        import train_repr
    finally:
        sys.path.pop(0)
    args = train_repr.get_args_parser().parse_args(["--data", "d", "--out", "o", "--no-jitter", "--init-from", "w.pth",
                                                    "--head", "cosine", "--loss", "class_balanced_focal"])
    config = train_repr.config_from_args(args)
    assert (config.no_jitter, config.init_from, config.head, config.loss) == (True, "w.pth", "cosine",
                                                                             "class_balanced_focal")
