import numpy as np
import pytest

from conftest import SPLITS, needs_splits, write_idx
from lt_dist.errors import UserInputError
from lt_dist.shards.sources import folder_source, idx_source, list_source, read_split_list


def test_folder_source_labels_are_sorted_class_names(image_folder):
    source = folder_source(str(image_folder), "train")
    assert source.class_names == [f"class_{j:02d}" for j in range(5)]
    items = source.splits["train"]
    assert np.bincount([i.label for i in items]).tolist() == [12, 8, 5, 3, 2]
    assert items[0].id == "class_00/img_0000.jpg"


def test_folder_source_refuses_an_empty_class(image_folder):
    (image_folder / "class_99").mkdir()
    with pytest.raises(UserInputError, match="class 'class_99'.*no images"):
        folder_source(str(image_folder), "train")


@needs_splits
def test_places_lt_list_parses():
    entries = read_split_list(str(SPLITS / "Places_LT_train.txt"))
    assert len(entries) == 62500
    assert entries[0] == ("train/airfield/00004851.jpg", 0, 1)


@pytest.mark.parametrize("line, message", [
    ("a/b.jpg x\n", "line 2.*label 'x' is not an integer"),
    ("a/b.jpg 9\n", "line 2.*label 9 is out of range"),
    ("nolabel\n", "line 2.*expected 'relative/path label'"),
])
def test_split_list_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "split.txt"
    path.write_text("ok/a.jpg 0\n" + line)
    with pytest.raises(UserInputError, match=message.replace("line 2", "split.txt:2")):
        read_split_list(str(path), num_classes=3)


def test_list_source_refuses_an_empty_class(tmp_path):
    path = tmp_path / "split.txt"
    path.write_text("a.jpg 0\nb.jpg 2\n")
    with pytest.raises(UserInputError, match="class 1 has no images"):
        list_source(str(path), str(tmp_path), "train")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_source_reads_gzip_and_plain(tmp_path, gz):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (6, 5, 4)), np.array([0, 1, 2, 0, 1, 2])
    write_idx(tmp_path, "train", images, labels, gz)
    write_idx(tmp_path, "t10k", images[:3], labels[:3], gz)
    source = idx_source(str(tmp_path))
    assert [i.id for i in source.splits["train"]][:2] == ["train/0", "train/1"]
    assert source.splits["train"][4].label == 1
    assert np.array_equal(source.splits["train"][5].pixels, images[5])
    assert len(source.splits["test"]) == 3


def test_idx_source_names_a_missing_file(tmp_path):
    with pytest.raises(UserInputError, match="no train-images-idx3-ubyte"):
        idx_source(str(tmp_path))
