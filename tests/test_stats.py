import json

from conftest import SPLITS, needs_splits, run_cli
from lt_dist.shards.stats import count_stats, load_counts


@needs_splits
def test_imagenet_lt_counts_match_the_paper():
    counts = load_counts(counts_file=str(SPLITS / "ImageNet_LT_train_class_counts.json"))
    stats = count_stats(next(iter(counts.values())))
    assert (stats["classes"], stats["images"], stats["max"], stats["min"]) == (1000, 115846, 1280, 5)
    assert (stats["many_classes"], stats["medium_classes"], stats["few_classes"]) == (385, 479, 136)
    assert stats["imbalance"] == 256.0
    assert stats["many_images"] + stats["medium_images"] + stats["few_images"] == 115846


@needs_splits
def test_places_lt_split_list_groups():
    counts = load_counts(str(SPLITS / "Places_LT_train.txt"))
    stats = count_stats(counts["Places_LT_train.txt"])
    assert (stats["classes"], stats["max"], stats["min"]) == (365, 4980, 5)
    assert (stats["many_classes"], stats["medium_classes"], stats["few_classes"]) == (131, 163, 71)


@needs_splits
def test_stats_cli_prints_numbers_and_plots(tmp_path, capsys):
    plot = tmp_path / "counts.png"
    status, out, _ = run_cli(["stats", "--counts", SPLITS / "ImageNet_LT_train_class_counts.json",
                              "--plot", plot], capsys)
    assert status == 0
    assert "115,846 images" in out and "max 1,280 / min 5" in out
    assert "385 classes" in out and "479 classes" in out and "136 classes" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    status, out, _ = run_cli(["stats", SPLITS / "Places_LT_train.txt", "--json"], capsys)
    assert json.loads(out)["Places_LT_train.txt"]["few_classes"] == 71


def test_stats_cli_names_a_bad_counts_file(tmp_path, capsys):
    bad = tmp_path / "counts.json"
    bad.write_text("{not json")
    status, _, err = run_cli(["stats", "--counts", bad], capsys)
    assert status == 2 and "counts.json" in err


def test_val_and_test_are_grouped_by_the_training_counts(tmp_path, capsys):
    from conftest import make_image_folder

    train = make_image_folder(tmp_path / "images", [150, 30, 8], size=(8, 8))
    assert run_cli(["pack", train, "--out", tmp_path / "ds", "--val-per-class", "4", "--no-progress"], capsys)[0] == 0
    status, out, _ = run_cli(["stats", tmp_path / "ds", "--json"], capsys)
    numbers = json.loads(out)
    # train keeps 146/26/4: many/medium/few by its own counts; val's 4 per class take train's groups
    assert [numbers["train"][f"{g}_classes"] for g in ("many", "medium", "few")] == [1, 1, 1]
    assert [numbers["val"][f"{g}_classes"] for g in ("many", "medium", "few")] == [1, 1, 1]
    assert numbers["val"]["grouped_by"] == "train" and numbers["train"]["grouped_by"] == "self"
    status, out, _ = run_cli(["stats", tmp_path / "ds"], capsys)
    assert "val: 3 classes, 12 images" in out and "groups by the training counts" in out


def test_a_balanced_list_alone_has_no_shot_groups(tmp_path, capsys):
    counts = tmp_path / "val_counts.json"
    counts.write_text(json.dumps([20, 20, 20]))
    status, out, _ = run_cli(["stats", "--counts", counts], capsys)
    assert status == 0 and "no shot groups without the training counts" in out and "many (" not in out
