"""lt_dist.report.run: finding the stage-1 run behind a search and reading its log, on files written here."""
import json

from lt_dist.report.run import find_sources, provenance_rows, read_log


def write_lines(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


def test_read_log_keeps_the_last_line_of_each_epoch_and_skips_torn_ones(tmp_path):
    write_lines(tmp_path / "log.jsonl", [
        {"kind": "train", "step": 20, "lr": 0.1, "loss": 2.0},
        {"kind": "epoch", "step": 40, "epoch": 0, "loss": 1.5, "val_all": 30.0},
        {"kind": "epoch", "step": 40, "epoch": 0, "loss": 1.4, "val_all": 31.0},  # a resume logged it again
        {"kind": "train", "step": 60, "lr": 0.05, "loss": 1.0},
        '{"kind": "epoch", "epoch": 1, "lo',  # torn by a kill
        {"kind": "test", "step": 80, "all": 40.0},
        [1, 2],
    ])
    epochs, lr_steps = read_log(str(tmp_path))
    assert [(e["epoch"], e["loss"], e["val_all"]) for e in epochs] == [(0, 1.4, 31.0)]
    assert lr_steps == [(20, 0.1), (60, 0.05)]
    assert read_log(str(tmp_path / "missing")) == ([], [])


def test_find_sources_follows_features_to_the_checkpoint_folder(tmp_path):
    run_dir, features = tmp_path / "runs" / "a", tmp_path / "features"
    run_dir.mkdir(parents=True)
    features.mkdir()
    (run_dir / "config.json").write_text("{}")
    index = {"ckpt": str(run_dir / "best_model.pt"), "arch": "resnet10"}
    (features / "features.json").write_text(json.dumps(index))
    assert find_sources({"features": str(features)}) == (index, str(run_dir))
    (features / "features.json").write_text(json.dumps({**index, "ckpt": str(run_dir)}))  # --ckpt RUN_DIR
    assert find_sources({"features": str(features)})[1] == str(run_dir)
    (run_dir / "config.json").unlink()  # the run folder is gone or was never there: no run, no error
    assert find_sources({"features": str(features)})[1] is None
    assert find_sources({}) == ({}, None)


def test_provenance_rows_take_the_run_first_and_leave_out_what_was_not_recorded(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "train": {"data": "s3://b/shards/x", "arch": "resnext50_32x4d", "epochs": 90, "sampler": "class",
                  "loss": "focal", "loss_params": {"gamma": 2.0}, "seed": 3},
        "world_size": 16, "num_nodes": 2, "git_commit": "abc+dirty", "command": "python launch/train_repr.py"}))
    index = {"data": "shards/x", "arch": "other", "ckpt": "runs/x/best_model.pt", "best_epoch": 7,
             "command": "python lt_dist extract"}
    rows = dict(provenance_rows({"seed": 0, "select_on": "val", "command": "python search"}, index, str(tmp_path)))
    assert rows["data"] == "s3://b/shards/x" and rows["arch"] == "resnext50_32x4d"
    assert (rows["loss"], rows["world size"], rows["nodes"], rows["best epoch on val (from 0)"]) == \
        ("focal (gamma=2.0)", "16", "2", "7")
    assert (rows["stage 1"], rows["extract"], rows["search"]) == \
        ("python launch/train_repr.py", "python lt_dist extract", "python search")
    assert "git commit (search)" not in rows
    only_index = dict(provenance_rows({}, index, None))
    assert only_index["arch"] == "other" and "epochs" not in only_index and "stage-1 run" not in only_index


def test_a_hand_edited_config_never_breaks_the_report(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"train": {"loss": "ce", "loss_params": "gamma=2"},
                                                      "world_size": None}))
    rows = dict(provenance_rows({}, {}, str(tmp_path)))
    assert rows == {"stage-1 run": str(tmp_path), "loss": "ce"}
    (tmp_path / "config.json").write_text("[1, 2]")
    assert dict(provenance_rows({}, {}, str(tmp_path))) == {"stage-1 run": str(tmp_path)}
