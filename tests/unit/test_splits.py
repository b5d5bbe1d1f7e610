"""The split rules (beam_jobs/splits.py): the user's own split wins over the hash, wherever they put it."""

from __future__ import annotations

import pytest

from beam_jobs.splits import (
    Pairing,
    hash_split,
    listed_ids,
    listed_images,
    root_of,
    split_of,
    split_of_label_file,
    voc_image_set_files,
    yaml_split_dirs,
    yaml_split_lists,
    yolo_key,
)


@pytest.mark.parametrize(
    "path, split",
    [
        ("/d/images/train/a.jpg", "train"),  # Ultralytics
        ("/d/train/images/a.jpg", "train"),  # Roboflow's YOLO export
        ("/d/valid/a.jpg", "val"),
        ("/d/images/val/2024/a.jpg", "val"),  # at any depth
        ("/d/Test/a.jpg", "test"),
        ("/d/TRAINING/a.jpg", "train"),
    ],
)
def test_folders_name_the_split(path, split):
    assert split_of(path, "/d", "", "/labels", "a", 0.5) == split


def test_only_folders_below_images_count():
    # The user's own base directory is called "train": it says nothing about the split.
    assert split_of("/data/train/a.jpg", "/data/train", "", "", "a", 0.0) == "train" == hash_split("a", 0.0)
    assert split_of("/data/train/a.jpg", "/data/train", "", "", "a", 0.99999) == hash_split("a", 0.99999) == "val"
    # A file name is not a folder: test.jpg in no split folder is hashed.
    assert split_of("/d/test.jpg", "/d", "", "", "test", 0.0) == "train"


@pytest.mark.parametrize(
    "label, split",
    [
        ("instances_val2017.json", "val"),
        ("annotations/instances_train2017.json", "train"),
        ("valid/_annotations.coco.json", "val"),
        ("test.csv", "test"),
        ("labels.csv", None),
        ("contest.json", None),  # a word, not a substring
    ],
)
def test_label_files_name_the_split(label, split):
    assert split_of_label_file(label) == split


def test_image_folder_before_label_file_before_hash():
    assert split_of("/d/val/a.jpg", "/d", "/l/train.json", "/l", "a", 0.0) == "val"
    assert split_of("/d/a.jpg", "/d", "/l/test.json#row3", "/l", "a", 0.0) == "test"
    assert split_of("/d/a.jpg", "/d", "/d/a.jpg", "/d", "a", 0.0) == "train"  # YOLO without labels: the image itself


def test_data_yaml_directories_win(tmp_path):
    dirs = yaml_split_dirs(
        {"path": "..", "train": "part-one/images", "val": ["part-two/images"], "test": "list.txt"}, "/ds/cfg"
    )
    assert dirs == {"/ds/part-one/images": "train", "/ds/part-two/images": "val"}
    assert split_of("/ds/part-two/images/train/a.jpg", "/ds", "", "", "a", 0.0, dirs) == "val"
    assert split_of("/ds/other/a.jpg", "/ds", "", "", "a", 0.0, dirs) == "train"


def test_split_lists_name_images_before_any_folder():
    """A data.yaml entry that is a .txt file lists image paths (./ and plain relative paths below the
    list's directory, absolute as written); VOC's ImageSets files list image ids; either wins over
    the folders and the hash."""
    doc = {"path": "/ds", "train": "train.txt", "val": ["lists/val.txt", "images/val"], "test": "/elsewhere/test.txt"}
    assert yaml_split_lists(doc, "/cfg") == {
        "/ds/train.txt": "train",
        "/ds/lists/val.txt": "val",
        "/elsewhere/test.txt": "test",
    }
    assert yaml_split_dirs(doc, "/cfg") == {"/ds/images/val": "val"}
    text = "./images/a.jpg\n\nimages/b.jpg\n# a comment\n/abs/c.jpg\n../up/d.jpg\n"
    assert listed_images(text, "/ds/lists/val.txt") == [
        "/ds/lists/images/a.jpg",
        "/ds/lists/images/b.jpg",
        "/abs/c.jpg",
        "/ds/up/d.jpg",
    ]
    assert listed_ids("2008_000008\n2008_000015  1\n\n") == ["2008_000008", "2008_000015"]
    assert voc_image_set_files("/VOC2012/") == {s: f"/VOC2012/ImageSets/Main/{s}.txt" for s in ("train", "val", "test")}
    listed = {"/ds/train/a.jpg": "val", "b": "test"}
    assert split_of("/ds/train/a.jpg", "/ds", "", "", "a", 0.0, listed=listed) == "val"  # the list, not the folder
    assert split_of("/ds/b.jpg", "/ds", "", "", "b", 0.0, listed=listed) == "test"  # by image id
    assert split_of("/ds/val/c.jpg", "/ds", "", "", "c", 0.0, listed=listed) == "val"  # not listed: the folder
    pairing = Pairing("/ds/images", "/ds/Annotations", 0.0, list_files=("/ds/train.txt",))
    assert pairing.is_split_list("/ds/train.txt") and pairing.is_split_list("/ds/ImageSets/Layout/x.txt")
    assert not pairing.is_split_list("/ds/Annotations/x.xml")
    assert not Pairing("/ds/images", "/ds/labels", 0.0, by_path=True).is_split_list("/ds/labels/ImageSets/x.txt")


def test_yolo_pairs_by_path_as_ultralytics():
    assert yolo_key("images/train/x.jpg") == yolo_key("labels/train/x.txt") == "train/x"
    assert yolo_key("train/x.jpg") == "train/x" != yolo_key("val/x.jpg")
    assert yolo_key("x.jpg") == yolo_key("x.txt") == "x"


@pytest.mark.parametrize(
    "location, root",
    [
        ("/d/images", "/d/images"),
        ("/d/images/", "/d/images"),
        ("/d/images/*.jpg", "/d/images"),
        ("/d/*/x.jpg", "/d"),
        ("s3://b/p/**", "s3://b/p"),
        ("/d/labels.json", "/d"),
    ],
)
def test_root_of(location, root):
    assert root_of(location) == root
