"""The nightly 'what changed since last night' table (pure function)."""

from flows.nightly import ingest_changes


def _stats(written, per_class, rejected=None, boxes_rejected=None):
    return {
        "images_written": {"total": written},
        "boxes_per_class": per_class,
        "images_rejected": {"total": sum((rejected or {}).values()), **(rejected or {})},
        "boxes_rejected": {"total": sum((boxes_rejected or {}).values()), **(boxes_rejected or {})},
    }


def test_changes_show_added_images_class_counts_and_new_reasons():
    last = _stats(100, {"cat": 50}, {"duplicate": 2})
    tonight = _stats(120, {"cat": 55, "dog": 7}, {"duplicate": 3, "decode_error": 1}, {"out_of_bounds": 4})
    rows = {r["what"]: (r["last_night"], r["tonight"]) for r in ingest_changes(last, tonight)}
    assert rows["images written"] == (100, 120)
    assert rows["images added (net)"] == (None, 20)
    assert rows["boxes[cat]"] == (50, 55) and rows["boxes[dog]"] == (None, 7)
    assert rows["images_rejected[duplicate]"] == (2, 3)
    assert rows["images_rejected[decode_error] (new)"] == (None, 1)
    assert rows["boxes_rejected[out_of_bounds] (new)"] == (None, 4)


def test_removed_images_and_first_night():
    rows = {r["what"]: r["tonight"] for r in ingest_changes(_stats(10, {}), _stats(7, {}))}
    assert rows["images removed (net)"] == 3
    first = {r["what"]: r for r in ingest_changes(None, _stats(5, {"cat": 1}, {"duplicate": 1}))}
    assert (
        first["images written"]["last_night"] is None and "images_rejected[duplicate]" in first
    )  # nothing is 'new' on night one
