"""KeepBest: the exported weights are the best evaluated epoch's, across phases and a resume."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")


def _model():
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


def _set(model, value: float):
    model.set_weights([np.full_like(w, value) for w in model.get_weights()])


def test_restores_the_best_epoch_not_the_last(tmp_path):
    from model.callbacks import KeepBest

    model = _model()
    best = KeepBest(str(tmp_path / "best.weights.h5"))
    best.set_model(model)
    best.phase = "phase1"
    for epoch, (value, score) in enumerate([(1.0, 0.2), (2.0, 0.5), (3.0, 0.3), (4.0, None)]):
        _set(model, value)
        best.on_epoch_end(epoch, {} if score is None else {"val_mAP@.5": score, "loss": 1.0})
    assert (best.best, best.best_epoch, best.best_phase) == (0.5, 2, "phase1")
    assert best.restore(model) == 2
    assert all(np.all(w == 2.0) for w in model.get_weights())

    # A resumed run (a new process) knows the best so far: a worse epoch does not replace it.
    again = KeepBest(str(tmp_path / "best.weights.h5"))
    again.set_model(model)
    assert (again.best, again.best_epoch, again.best_phase) == (0.5, 2, "phase1")
    again.phase = "phase2"  # Keras counts epochs from 0 again in the next phase's fit()
    _set(model, 5.0)
    again.on_epoch_end(4, {"val_mAP@.5": 0.4})
    assert again.restore(model) == 2 and all(np.all(w == 2.0) for w in model.get_weights())
    again.on_epoch_end(5, {"val_mAP@.5": 0.6})
    assert (again.best_epoch, again.best_phase) == (6, "phase2")


def test_nothing_evaluated_keeps_the_last_weights(tmp_path):
    from model.callbacks import KeepBest

    model = _model()
    _set(model, 7.0)
    best = KeepBest(str(tmp_path / "best.weights.h5"))
    best.set_model(model)
    best.on_epoch_end(0, {"loss": 1.0})
    assert best.restore(model) is None
    assert all(np.all(w == 7.0) for w in model.get_weights())
    assert not (tmp_path / "best.weights.h5").exists()


def test_the_best_epoch_by_fitness_is_the_tightest_that_detects(tmp_path):
    """best_epoch_metric fitness (Ultralytics' 0.1 mAP@.5 + 0.9 mAP@[.5:.95]): of an epoch that detects
    more at IoU 0.5 and one whose boxes sit tighter, the tighter is kept, where map50 keeps the other;
    a run resumed with another metric does not hold the saved score of the first as its bar."""
    from model.callbacks import KeepBest, fitness

    epochs = [
        (1.0, {"mAP@.5": 0.95, "mAP": 0.45}),
        (2.0, {"mAP@.5": 0.93, "mAP": 0.52}),
        (3.0, {"mAP@.5": 0.60, "mAP": 0.30}),
    ]
    kept = {}
    for metric in ("map50", "fitness", "map"):
        model = _model()
        best = KeepBest(str(tmp_path / f"{metric}.weights.h5"), metric)
        best.set_model(model)
        for epoch, (value, m) in enumerate(epochs):
            _set(model, value)
            best.on_epoch_end(epoch, {"val_mAP@.5": m["mAP@.5"], "val_mAP": m["mAP"], "val_fitness": fitness(m)})
        kept[metric] = best.restore(model)
        assert best.score(epochs[kept[metric] - 1][1]) == pytest.approx(best.best)
    assert kept == {"map50": 1, "fitness": 2, "map": 2}
    assert fitness({"mAP@.5": 0.93, "mAP": 0.52}) == pytest.approx(0.561)
    assert fitness({"mAP@.5": 0.93, "mAP": None}) is None

    other = KeepBest(str(tmp_path / "map50.weights.h5"), "fitness")
    assert other.best_epoch is None and other.best < 0


def test_epoch_lines_name_both_val_metrics_when_evaluated():
    """EpochLines (a log's one line per epoch): loss, and val mAP@.5 and mAP@[.5:.95] on evaluated epochs only."""
    from model.callbacks import EpochLines

    lines = []
    report = EpochLines(lines.append, total_epochs=4, offsets={"phase2": 2})
    report.phase = "phase2"
    report.on_epoch_begin(0)
    report.on_epoch_end(0, {"loss": 1.5, "val_mAP@.5": 0.8123, "val_mAP": 0.4567, "val_fitness": 0.49})
    report.on_epoch_end(1, {"loss": 1.25})
    assert lines[0].startswith(
        "train: epoch 3 of at most 4 (phase2), loss 1.5000, val mAP@.5 0.8123, mAP@[.5:.95] 0.4567, "
    )
    assert lines[1].startswith("train: epoch 4 of at most 4 (phase2), loss 1.2500, ") and "mAP" not in lines[1]


def test_a_phase_history_holds_every_epoch_once_however_often_it_is_resumed(tmp_path):
    """EpochCheckpoint writes the epoch's entry before its checkpoint: a kill between the two leaves an
    entry the checkpoint lacks, which the restore drops, so the epoch trained again appears once."""
    import json

    from model.callbacks import EpochCheckpoint, load_history

    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    model.optimizer.build(model.trainable_variables)
    first = EpochCheckpoint(str(tmp_path))
    first.set_model(model)
    for epoch, loss in enumerate([1.0, 0.5]):
        first.on_epoch_end(epoch, {"loss": np.float32(loss), "val_mAP@.5": 0.25, "note": "not a number"})
    assert load_history(str(tmp_path)) == [
        {"epoch": 1, "steps": 0, "loss": 1.0, "val_mAP@.5": 0.25},
        {"epoch": 2, "steps": 0, "loss": 0.5, "val_mAP@.5": 0.25},
    ]
    killed = load_history(str(tmp_path)) + [
        {"epoch": 3, "steps": 0, "loss": 9.0}
    ]  # written, then killed before the save
    (tmp_path / EpochCheckpoint.HISTORY).write_text(json.dumps(killed))

    resumed = EpochCheckpoint(str(tmp_path))
    assert resumed.restore(model) == 2 and [e["epoch"] for e in resumed.history] == [1, 2]
    resumed.on_epoch_end(2, {"loss": 0.25})
    assert [(e["epoch"], e["loss"]) for e in load_history(str(tmp_path))] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert EpochCheckpoint(str(tmp_path / "new")).restore(model) == 0 and load_history(str(tmp_path / "new")) == []


def test_validation_history_survives_a_resume_and_forgets_evaluations_after_the_checkpoint(tmp_path):
    from model.callbacks import ValidationMAP

    path = str(tmp_path / "validation_history.json")
    first = ValidationMAP(None, "", None, path=path)
    first.history = [
        {"phase": "start", "epoch": 0, "mAP": 0.1, "mAP@.5": 0.2, "seconds": 1.0},
        {"phase": "phase1", "epoch": 1, "mAP": 0.2, "mAP@.5": 0.3, "seconds": 5.0},
        {"phase": "phase1", "epoch": 2, "mAP": 0.3, "mAP@.5": 0.4, "seconds": 9.0},
    ]
    first._save()
    resumed = ValidationMAP(None, "", None, path=path)  # a new process: the kill came after epoch 2's evaluation
    assert resumed.history == first.history
    resumed.rewind("phase1", 1)  # its checkpoint was after epoch 1: epoch 2 is trained and evaluated again
    assert [(e["phase"], e["epoch"]) for e in ValidationMAP(None, "", None, path=path).history] == [
        ("start", 0),
        ("phase1", 1),
    ]
    resumed.rewind("phase2", 0)
    assert len(resumed.history) == 2


def test_map_near_map50_keeps_online_what_the_rule_picks_over_the_whole_history(tmp_path):
    """best_epoch_metric map_near_map50: the best mAP@[.5:.95] among the evaluations within the
    tolerance of the best mAP@.5. Over random histories (ties included, the run resumed by a new
    callback halfway), the epoch restored is the one ``within_map50_tolerance`` picks over the
    finished history, with that epoch's weights, and only a few evaluations' weights stay on disk."""
    from model.callbacks import KeepBest, KeepNearBest, keep_best, within_map50_tolerance

    rng = np.random.default_rng(0)
    model = _model()
    most_files = 0
    for trial in range(40):
        path = str(tmp_path / f"run{trial}" / "best.weights.h5")
        (tmp_path / f"run{trial}").mkdir()
        tolerance = float(rng.choice([0.0, 0.02, 0.05]))
        # coarse values (multiples of 0.01) so that mAP@.5 and mAP@[.5:.95] tie often
        history = [
            {
                "phase": "phase1" if e < 10 else "phase2",
                "epoch": e + 1,
                "mAP@.5": round(float(rng.integers(80, 96)) / 100, 2),
                "mAP": round(float(rng.integers(30, 50)) / 100, 2),
            }
            for e in range(20)
        ]
        best = keep_best(path, "map_near_map50", tolerance)
        assert isinstance(best, KeepNearBest) and best.monitor == "val_mAP@.5"
        for i, h in enumerate(history):
            if i == 10:  # killed and resumed: a new callback reads what the first wrote
                best = KeepNearBest(path, tolerance)
            _set(model, float(i))
            best.consider(model, h, h["epoch"], h["phase"])
            files = [p for p in (tmp_path / f"run{trial}").iterdir() if p.name.endswith(".weights.h5")]
            assert len(files) == len(best.candidates)
            most_files = max(most_files, len(files))
        want = within_map50_tolerance(history, tolerance)
        assert (best.best_epoch, best.best_phase, best.best) == (want["epoch"], want["phase"], want["mAP"]), trial
        _set(model, -1.0)
        assert best.restore(model) == want["epoch"]
        assert all(np.all(w == float(history.index(want))) for w in model.get_weights())
    assert most_files <= 8  # the front between the two figures, not every evaluation

    # Tolerance 0.02: the tighter epoch that detects within 0.01 of the best is exported, where map50 keeps the looser.
    epochs = [{"mAP@.5": 0.95, "mAP": 0.45}, {"mAP@.5": 0.94, "mAP": 0.52}, {"mAP@.5": 0.90, "mAP": 0.55}]
    kept = {}
    for name, callback in (
        ("map50", KeepBest(str(tmp_path / "a.weights.h5"))),
        ("near", KeepNearBest(str(tmp_path / "b.weights.h5"), 0.02)),
    ):
        for epoch, m in enumerate(epochs, start=1):
            callback.consider(model, m, epoch, "phase2")
        kept[name] = callback.best_epoch
    assert kept == {"map50": 1, "near": 2}
    assert (
        kept["near"]
        == within_map50_tolerance([dict(m, phase="phase2", epoch=e) for e, m in enumerate(epochs, 1)], 0.02)["epoch"]
    )


def test_map_near_map50_resumes_only_its_own_rule_and_removes_weights_no_record_names(tmp_path):
    from model.callbacks import KeepNearBest

    model = _model()
    first = KeepNearBest(str(tmp_path / "best.weights.h5"), 0.02)
    first.set_model(model)
    first.phase = "phase1"
    _set(model, 1.0)
    first.on_epoch_end(0, {"val_mAP@.5": 0.9, "val_mAP": 0.4, "loss": 1.0})
    first.on_epoch_end(1, {"loss": 1.0})  # not evaluated: nothing changes
    assert (first.best_epoch, first.best) == (1, 0.4)
    (tmp_path / "best.phase1.7.weights.h5").write_bytes(b"written, then killed before the record named it")
    again = KeepNearBest(str(tmp_path / "best.weights.h5"), 0.02)
    assert (again.best_epoch, again.best_phase) == (1, "phase1") and not (
        tmp_path / "best.phase1.7.weights.h5"
    ).exists()
    other = KeepNearBest(
        str(tmp_path / "best.weights.h5"), 0.05
    )  # another tolerance is another rule: no bar carried over
    assert other.best_epoch is None and other.restore(model) is None
