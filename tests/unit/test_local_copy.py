"""storage.local_dir / copy_tree_to_local: how a worker gets a remote SavedModel onto its disk."""

from __future__ import annotations

import os

import pytest

from ssdflow import storage


def _tree(root):
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"graph")
    (root / "variables" / "variables.index").write_bytes(b"index")
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(b"\x00" * 3_000_000)  # > one copy block


def test_copy_keeps_relative_paths_and_bytes(tmp_path):
    _tree(tmp_path / "src")
    copied = storage.copy_tree_to_local(str(tmp_path / "src"), str(tmp_path / "cache" / "k"))
    assert sorted(copied) == ["saved_model.pb", "variables/variables.data-00000-of-00001", "variables/variables.index"]
    for rel in copied:
        assert (tmp_path / "cache" / "k" / rel).read_bytes() == (tmp_path / "src" / rel).read_bytes()
    assert os.listdir(tmp_path / "cache") == ["k"]  # no temp directory left beside it


def test_an_existing_copy_is_kept_and_an_empty_source_refused(tmp_path):
    _tree(tmp_path / "src")
    dest = tmp_path / "cache" / "k"
    dest.mkdir(parents=True)
    (dest / "marker").write_text("first copy")
    storage.copy_tree_to_local(str(tmp_path / "src"), str(dest))  # lost the race: the first copy stays
    assert os.listdir(dest) == ["marker"] and os.listdir(tmp_path / "cache") == ["k"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no files"):
        storage.copy_tree_to_local(str(tmp_path / "empty"), str(tmp_path / "cache" / "e"))
    assert sorted(os.listdir(tmp_path / "cache")) == ["k"]


def test_local_paths_are_used_in_place_and_keys_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("SSDFLOW_CACHE_DIR", str(tmp_path / "cache"))
    assert storage.local_dir(str(tmp_path), "anything") == str(tmp_path)
    assert storage.local_dir(f"file://{tmp_path}", "anything") == str(tmp_path)
    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(ValueError, match="cache key"):
            storage.local_dir("s3://bucket/model", bad)


def test_only_included_files_are_copied(tmp_path):
    _tree(tmp_path / "src")
    (tmp_path / "src" / "keras.weights.h5").write_bytes(b"not needed to load")
    copied = storage.copy_tree_to_local(
        str(tmp_path / "src"), str(tmp_path / "k"), include=lambda rel: rel != "keras.weights.h5"
    )
    assert "keras.weights.h5" not in copied and not (tmp_path / "k" / "keras.weights.h5").exists()


def test_concurrent_copies_leave_one_whole_directory(tmp_path):
    import threading

    _tree(tmp_path / "src")
    results, errors = [], []

    def copy():
        try:
            results.append(storage.copy_tree_to_local(str(tmp_path / "src"), str(tmp_path / "cache" / "k")))
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=copy) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    assert os.listdir(tmp_path / "cache") == ["k"]  # the losers' temp directories are gone
    assert (tmp_path / "cache" / "k" / "variables" / "variables.data-00000-of-00001").stat().st_size == 3_000_000


def test_a_cache_others_may_write_to_is_refused(tmp_path, monkeypatch):
    shared = tmp_path / "shared-cache"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("SSDFLOW_CACHE_DIR", str(shared))
    with pytest.raises(PermissionError, match="not be writable by others"):
        storage.cache_root()
    monkeypatch.delenv("SSDFLOW_CACHE_DIR")
    root = storage.cache_root()  # the per-user default is created private
    assert str(os.getuid()) in os.path.basename(root) and os.stat(root).st_mode & 0o777 == 0o700
