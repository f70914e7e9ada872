"""Checkpoint tags, pruning, best_model.pt and the resume compatibility check."""
import json

import pytest
import torch

from lt_dist.engine.checkpoint import (check_resume_compatible, checkpoint_tag, choose_resume_tag, load_best_model,
                                       prune_checkpoints, save_best_model, write_tag_manifest)
from lt_dist.errors import UserInputError


def test_tags_sort_by_global_step():
    tags = [checkpoint_tag(step, epoch, end) for step, epoch, end in ((1150, 3, False), (1200, 3, True), (90, 0, True))]
    assert tags[0] == "gs000001150-epoch0003-mid" and tags[1] == "gs000001200-epoch0003-end"
    assert sorted(tags) == [tags[2], tags[0], tags[1]]


def test_prune_keeps_the_newest_tags_and_other_files(tmp_path):
    for step in (5, 10, 15, 20):
        complete_tag(tmp_path, step)
    (tmp_path / "latest").write_text(checkpoint_tag(20, 0, False))
    removed = prune_checkpoints(str(tmp_path), keep=2)
    assert removed == [checkpoint_tag(5, 0, False), checkpoint_tag(10, 0, False)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gs000000015-epoch0000-mid", "gs000000020-epoch0000-mid",
                                                          "latest"]


def complete_tag(folder, step: int, payload: bytes = b"weights") -> str:
    """A tag folder with one file and its manifest, as a finished save leaves it."""
    tag = checkpoint_tag(step, 0, False)
    (folder / tag).mkdir()
    (folder / tag / "mp_rank_00_model_states.pt").write_bytes(payload * 100)
    write_tag_manifest(str(folder / tag))
    return tag


def test_prune_never_counts_a_torn_tag_towards_keep(tmp_path):
    old, good = complete_tag(tmp_path, 5), complete_tag(tmp_path, 10)
    (tmp_path / checkpoint_tag(15, 0, False)).mkdir()  # a save that died before its manifest
    assert prune_checkpoints(str(tmp_path), keep=1) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == [good, checkpoint_tag(15, 0, False)]


def test_resume_falls_back_to_the_newest_complete_tag(tmp_path):
    logged = []
    older, newer = complete_tag(tmp_path, 5), complete_tag(tmp_path, 10)
    (tmp_path / "latest").write_text(newer)
    assert choose_resume_tag(str(tmp_path), logged.append) == newer and logged == []
    weights = tmp_path / newer / "mp_rank_00_model_states.pt"
    weights.write_bytes(weights.read_bytes()[:-1] + b"X")  # same size, other bytes
    assert choose_resume_tag(str(tmp_path), logged.append) == older
    assert f"{newer} is unusable: mp_rank_00_model_states.pt does not match its sha256" in logged[0]
    weights.write_bytes(b"torn")
    assert choose_resume_tag(str(tmp_path), logged.append) == older and "has 4 bytes, 700 were written" in logged[1]
    (tmp_path / "latest").write_text("gs999")  # names a tag that is not there
    assert choose_resume_tag(str(tmp_path), logged.append) == older and "names 'gs999'" in logged[2]
    (tmp_path / older / "lt_manifest.json").unlink()
    with pytest.raises(UserInputError, match=f"no usable checkpoint.*{older} is unusable: no lt_manifest.json"):
        choose_resume_tag(str(tmp_path), logged.append)


def test_resume_ignores_tags_newer_than_latest(tmp_path):
    good = complete_tag(tmp_path, 5)
    complete_tag(tmp_path, 10)  # finished writing but `latest` never moved: the save did not commit
    (tmp_path / "latest").write_text(good)
    assert choose_resume_tag(str(tmp_path), print) == good


def test_best_model_round_trips_without_leaving_a_temp_file(tmp_path):
    module = torch.nn.Linear(3, 2)
    save_best_model(str(tmp_path), module, {"arch": "resnet10", "epoch": 4, "num_classes": 2, "small_input": True,
                                            "train_counts": [3, 1], "class_names": ["a", "b"]})
    loaded = load_best_model(str(tmp_path))
    assert loaded["arch"] == "resnet10" and loaded["epoch"] == 4
    assert torch.equal(loaded["state_dict"]["weight"], module.weight.detach())
    assert [p.name for p in tmp_path.iterdir()] == ["best_model.pt"]
    with pytest.raises(UserInputError, match="finished stage-1 run"):
        load_best_model(str(tmp_path / "elsewhere"))
    (tmp_path / "best_model.pt").write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="not a readable stage-1 model"):
        load_best_model(str(tmp_path))


def test_resume_refuses_another_arch_naming_both(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"train": {"arch": "resnet10", "small_input": True},
                                                      "num_classes": 10}))
    check_resume_compatible(str(tmp_path), "resnet10", 10, True)
    with pytest.raises(UserInputError, match="arch='resnet10'.*arch='resnext152'"):
        check_resume_compatible(str(tmp_path), "resnext152", 10, True)
    with pytest.raises(UserInputError, match="num_classes=10.*num_classes=1000"):
        check_resume_compatible(str(tmp_path), "resnet10", 1000, True)
    (tmp_path / "config.json").write_text(json.dumps({"train": {"arch": "resnet10", "small_input": True,
                                                                "epochs": 2}, "num_classes": 10}))
    with pytest.raises(UserInputError, match="epochs=2.*epochs=3"):
        check_resume_compatible(str(tmp_path), "resnet10", 10, True, {"epochs": 3, "seed": 0})
    with pytest.raises(UserInputError, match="nothing to resume"):
        check_resume_compatible(str(tmp_path / "new"), "resnet10", 10, True)
