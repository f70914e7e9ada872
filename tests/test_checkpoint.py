"""Checkpoint tags, pruning, best_model.pt and the resume compatibility check."""
import json

import pytest
import torch

from lt_dist.engine.checkpoint import (check_resume_compatible, checkpoint_tag, load_best_model, prune_checkpoints,
                                       save_best_model)
from lt_dist.errors import UserInputError


def test_tags_sort_by_global_step():
    tags = [checkpoint_tag(step, epoch, end) for step, epoch, end in ((1150, 3, False), (1200, 3, True), (90, 0, True))]
    assert tags[0] == "gs000001150-epoch0003-mid" and tags[1] == "gs000001200-epoch0003-end"
    assert sorted(tags) == [tags[2], tags[0], tags[1]]


def test_prune_keeps_the_newest_tags_and_other_files(tmp_path):
    for step in (5, 10, 15, 20):
        (tmp_path / checkpoint_tag(step, 0, False)).mkdir()
    (tmp_path / "latest").write_text(checkpoint_tag(20, 0, False))
    removed = prune_checkpoints(str(tmp_path), keep=2)
    assert removed == [checkpoint_tag(5, 0, False), checkpoint_tag(10, 0, False)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gs000000015-epoch0000-mid", "gs000000020-epoch0000-mid",
                                                          "latest"]


def test_best_model_round_trips_without_leaving_a_temp_file(tmp_path):
    module = torch.nn.Linear(3, 2)
    save_best_model(str(tmp_path), module, {"arch": "resnet10", "epoch": 4})
    loaded = load_best_model(str(tmp_path))
    assert loaded["arch"] == "resnet10" and loaded["epoch"] == 4
    assert torch.equal(loaded["state_dict"]["weight"], module.weight.detach())
    assert [p.name for p in tmp_path.iterdir()] == ["best_model.pt"]
    with pytest.raises(UserInputError, match="finished stage-1 run"):
        load_best_model(str(tmp_path / "elsewhere"))


def test_resume_refuses_another_arch_naming_both(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"train": {"arch": "resnet10", "small_input": True},
                                                      "num_classes": 10}))
    check_resume_compatible(str(tmp_path), "resnet10", 10, True)
    with pytest.raises(UserInputError, match="arch='resnet10'.*arch='resnext152'"):
        check_resume_compatible(str(tmp_path), "resnext152", 10, True)
    with pytest.raises(UserInputError, match="num_classes=10.*num_classes=1000"):
        check_resume_compatible(str(tmp_path), "resnet10", 1000, True)
    with pytest.raises(UserInputError, match="nothing to resume"):
        check_resume_compatible(str(tmp_path / "new"), "resnet10", 10, True)
