"""The split rules (beam_jobs/splits.py): the user's own split wins over the hash, wherever they put it."""

from __future__ import annotations

import pytest

from beam_jobs.splits import hash_split, root_of, split_of, split_of_label_file, yaml_split_dirs, yolo_key


@pytest.mark.parametrize("path, split", [
    ("/d/images/train/a.jpg", "train"),  # Ultralytics
    ("/d/train/images/a.jpg", "train"),  # Roboflow's YOLO export
    ("/d/valid/a.jpg", "val"),
    ("/d/images/val/2024/a.jpg", "val"),  # at any depth
    ("/d/Test/a.jpg", "test"),
    ("/d/TRAINING/a.jpg", "train"),
])
def test_folders_name_the_split(path, split):
    assert split_of(path, "/d", "", "/labels", "a", 0.5) == split


def test_only_folders_below_images_count():
    # The user's own base directory is called "train": it says nothing about the split.
    assert split_of("/data/train/a.jpg", "/data/train", "", "", "a", 0.0) == "train" == hash_split("a", 0.0)
    assert split_of("/data/train/a.jpg", "/data/train", "", "", "a", 0.99999) == hash_split("a", 0.99999) == "val"
    # A file name is not a folder: test.jpg in no split folder is hashed.
    assert split_of("/d/test.jpg", "/d", "", "", "test", 0.0) == "train"


@pytest.mark.parametrize("label, split", [
    ("instances_val2017.json", "val"),
    ("annotations/instances_train2017.json", "train"),
    ("valid/_annotations.coco.json", "val"),
    ("test.csv", "test"),
    ("labels.csv", None),
    ("contest.json", None),  # a word, not a substring
])
def test_label_files_name_the_split(label, split):
    assert split_of_label_file(label) == split


def test_image_folder_before_label_file_before_hash():
    assert split_of("/d/val/a.jpg", "/d", "/l/train.json", "/l", "a", 0.0) == "val"
    assert split_of("/d/a.jpg", "/d", "/l/test.json#row3", "/l", "a", 0.0) == "test"
    assert split_of("/d/a.jpg", "/d", "/d/a.jpg", "/d", "a", 0.0) == "train"  # YOLO without labels: the image itself


def test_data_yaml_directories_win(tmp_path):
    dirs = yaml_split_dirs({"path": "..", "train": "part-one/images", "val": ["part-two/images"], "test": "list.txt"}, "/ds/cfg")
    assert dirs == {"/ds/part-one/images": "train", "/ds/part-two/images": "val"}
    assert split_of("/ds/part-two/images/train/a.jpg", "/ds", "", "", "a", 0.0, dirs) == "val"
    assert split_of("/ds/other/a.jpg", "/ds", "", "", "a", 0.0, dirs) == "train"


def test_yolo_pairs_by_path_as_ultralytics():
    assert yolo_key("images/train/x.jpg") == yolo_key("labels/train/x.txt") == "train/x"
    assert yolo_key("train/x.jpg") == "train/x" != yolo_key("val/x.jpg")
    assert yolo_key("x.jpg") == yolo_key("x.txt") == "x"


@pytest.mark.parametrize("location, root", [
    ("/d/images", "/d/images"), ("/d/images/", "/d/images"), ("/d/images/*.jpg", "/d/images"),
    ("/d/*/x.jpg", "/d"), ("s3://b/p/**", "s3://b/p"), ("/d/labels.json", "/d"),
])
def test_root_of(location, root):
    assert root_of(location) == root
