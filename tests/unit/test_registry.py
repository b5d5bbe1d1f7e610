"""model.registry: versions appear atomically, champion.json only names committed versions, and
champion/challenger decisions compare on the same current val split."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest

from model import registry
from model.registry import PromotionPolicy, decide, label_map_diff
from ssdflow.schema import LabelMap

LM = {"cat": 1, "dog": 2}
CHAMP = {"version": "v1", "promoted_at": "2026-01-01T00:00:00Z", "metrics": {}, "decision": {}}


def make_version(root: Path, map50: float | None, label_map=LM, map_all: float = 0.3) -> str:
    """A committed fake version (an empty saved_model.pb: the registry knows a version by that file
    but never loads models itself)."""
    version = registry.new_version(root)
    staging = Path(registry.staging_dir(root, version))
    (staging / "saved_model.pb").write_bytes(b"")
    (staging / "metrics.json").write_text(json.dumps({"mAP@.5": map50, "mAP": map_all}))
    (staging / "label_map.json").write_text(LabelMap(label_map).to_json())
    Path(registry.commit_version(root, version))
    return version


# --- versions ------------------------------------------------------------------------------------


def test_new_version_ids_sort_by_creation_and_are_unique(tmp_path):
    ids = [registry.new_version(tmp_path) for _ in range(20)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(registry._GENERATED_RE.match(v) for v in ids)


def test_new_version_sorts_after_existing_versions_on_disk(tmp_path):
    far_future = "29991231T235959Z-ffff"
    (tmp_path / far_future).mkdir()
    v = registry.new_version(tmp_path)
    assert v > far_future


def test_staging_then_commit(tmp_path):
    v = registry.new_version(tmp_path)
    staging = Path(registry.staging_dir(tmp_path, v))
    assert staging.is_dir() and staging.name.startswith(".staging-")
    (staging / "metrics.json").write_text("{}")
    (staging / "label_map.json").write_text(LabelMap(LM).to_json())
    (staging / "saved_model.pb").write_bytes(b"")
    assert registry.list_versions(tmp_path) == []  # staging is not a version
    assert not Path(registry.version_dir(tmp_path, v)).exists()

    committed = Path(registry.commit_version(tmp_path, v))
    assert committed == Path(registry.version_dir(tmp_path, v)) == tmp_path / v
    assert (committed / "metrics.json").read_text() == "{}"
    assert not staging.exists()
    assert registry.list_versions(tmp_path) == [v]


def test_commit_refuses_existing_target_and_missing_staging(tmp_path):
    v = registry.new_version(tmp_path)
    Path(registry.staging_dir(tmp_path, v))
    (tmp_path / v).mkdir()  # an (empty) directory in the way: rename(2) alone would replace it
    with pytest.raises(FileExistsError):
        Path(registry.commit_version(tmp_path, v))
    assert (tmp_path / f".staging-{v}").is_dir()
    with pytest.raises(FileNotFoundError):
        Path(registry.commit_version(tmp_path, "never-staged"))


def test_list_versions_sorted_and_missing_root(tmp_path):
    assert registry.list_versions(tmp_path / "nope") == []
    a, b = make_version(tmp_path, 0.5), make_version(tmp_path, 0.6)
    (tmp_path / "champion.json").write_text("{}")
    (tmp_path / "nightly" / "20261201T020000Z").mkdir(parents=True)  # an older nightly flow's history: not a version
    assert registry.list_versions(tmp_path) == sorted([a, b])


def test_version_names_cannot_escape_the_root(tmp_path):
    for bad in ["../x", ".staging-x", "a/b", ""]:
        with pytest.raises(ValueError):
            Path(registry.version_dir(tmp_path, bad))


def test_set_champion_refuses_uncommitted_or_missing(tmp_path):
    v = registry.new_version(tmp_path)
    (Path(registry.staging_dir(tmp_path, v)) / "saved_model.pb").write_bytes(b"")
    with pytest.raises(FileNotFoundError):
        registry.set_champion(tmp_path, v, {"promoted": True})
    with pytest.raises(FileNotFoundError):
        registry.set_champion(tmp_path, "20200101T000000Z-0000", {"promoted": True})
    assert registry.read_champion(tmp_path) is None

    Path(registry.commit_version(tmp_path, v))
    registry.set_champion(tmp_path, v, {"promoted": True})
    champ = registry.read_champion(tmp_path)
    assert champ["version"] == v and champ["decision"] == {"promoted": True}
    assert champ["promoted_at"].endswith("Z")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file() and not p.name.endswith(".lock")) == [
        "champion.json"
    ]  # no temp files


def test_resolve_model_uri_takes_a_saved_model_or_the_champion(tmp_path):
    v = make_version(tmp_path, 0.5)
    (tmp_path / v / "saved_model.pb").write_bytes(b"graph")
    with pytest.raises(FileNotFoundError, match="neither a SavedModel"):
        registry.resolve_model_uri(str(tmp_path))  # no champion yet
    registry.set_champion(tmp_path, v, {"promoted": True})
    assert registry.resolve_model_uri(str(tmp_path) + "/") == str(tmp_path / v)
    assert registry.resolve_model_uri(str(tmp_path / v)) == str(tmp_path / v)
    assert Path(registry.resolve_model_dir(tmp_path)) == tmp_path / v
    (tmp_path / "champion.json").write_text(json.dumps({"version": "../elsewhere"}))
    with pytest.raises(ValueError, match="not a champion record"):
        registry.resolve_model_uri(str(tmp_path))
    (tmp_path / "champion.json").write_text(json.dumps({"version": "20200101T000000Z-0000"}))
    with pytest.raises(FileNotFoundError, match="not committed"):
        registry.resolve_model_uri(str(tmp_path))


# --- label maps and policy -----------------------------------------------------------------------


def test_label_map_diff():
    assert label_map_diff(LM, dict(LM)) == {"added": [], "removed": [], "renumbered": {}, "identical": True}
    d = label_map_diff({"cat": 1, "dog": 2, "emu": 3}, {"cat": 2, "dog": 1, "fox": 3})
    assert d == {"added": ["fox"], "removed": ["emu"], "renumbered": {"cat": [1, 2], "dog": [2, 1]}, "identical": False}


def test_policy_validation():
    assert PromotionPolicy().model_dump() == {
        "tolerance": 0.0,
        "metric": "mAP@.5",
        "min_score": 0.0,
        "on_label_map_change": "refuse",
    }
    for bad in [{"tolerance": -0.1}, {"tolerance": 1.5}, {"metric": "AR"}, {"on_label_map_change": "yolo"}]:
        with pytest.raises(pydantic.ValidationError):
            PromotionPolicy(**bad)


# --- decide --------------------------------------------------------------------------------------


def _decide(challenger_score, champion_score, policy=None, challenger_lm=LM, champion_lm=LM, champion=CHAMP):
    return decide(
        "v2",
        {"mAP@.5": challenger_score, "mAP": 0.1},
        challenger_lm,
        champion,
        None if champion is None else {"mAP@.5": champion_score, "mAP": 0.9},
        champion_lm,
        policy or PromotionPolicy(),
    )


def test_decide_no_champion_promotes():
    d = _decide(0.1, None, champion=None, champion_lm=None)
    assert d["promoted"] is True and "no champion yet" in d["reason"]
    assert d["champion"] is None and d["champion_score"] is None and d["label_map_diff"] is None


def test_decide_record_fields():
    d = _decide(0.61, 0.6, PromotionPolicy(tolerance=0.02))
    assert set(d) == {
        "challenger",
        "champion",
        "metric",
        "challenger_score",
        "champion_score",
        "tolerance",
        "min_score",
        "label_map_diff",
        "promoted",
        "reason",
        "decided_at",
    }
    assert (d["challenger"], d["champion"], d["metric"]) == ("v2", "v1", "mAP@.5")
    assert (d["challenger_score"], d["champion_score"], d["tolerance"]) == (0.61, 0.6, 0.02)
    assert d["label_map_diff"]["identical"] is True
    json.dumps(d, allow_nan=False)


def test_decide_better_promoted_worse_not():
    assert _decide(0.61, 0.60)["promoted"] is True
    assert _decide(0.60, 0.60)["promoted"] is True  # ties go to the fresher model
    worse = _decide(0.55, 0.60, PromotionPolicy(tolerance=0.02))
    assert worse["promoted"] is False and "not promoted" in worse["reason"]


def test_decide_within_tolerance_promoted():
    assert _decide(0.59, 0.60)["promoted"] is False
    assert _decide(0.59, 0.60, PromotionPolicy(tolerance=0.02))["promoted"] is True
    assert _decide(0.57, 0.60, PromotionPolicy(tolerance=0.02))["promoted"] is False


def test_decide_floor_refuses_first_champion_and_better_challengers():
    floor = PromotionPolicy(min_score=0.3)
    first = _decide(0.2, None, floor, champion=None, champion_lm=None)
    assert first["promoted"] is False and "below the floor 0.3" in first["reason"] and first["min_score"] == 0.3
    assert _decide(0.25, 0.1, floor)["promoted"] is False  # better than the champion, still below the floor
    assert _decide(0.3, 0.1, floor)["promoted"] is True
    assert _decide(0.3, None, floor, champion=None, champion_lm=None)["promoted"] is True


def test_decide_uses_policy_metric():
    # challenger: mAP@.5 0.5, mAP 0.1; champion: mAP@.5 0.4, mAP 0.9
    assert _decide(0.5, 0.4)["promoted"] is True
    d = _decide(0.5, 0.4, PromotionPolicy(metric="mAP"))
    assert d["promoted"] is False and (d["challenger_score"], d["champion_score"]) == (0.1, 0.9)


def test_decide_missing_scores_not_promoted():
    assert _decide(None, 0.6)["promoted"] is False
    assert _decide(float("nan"), 0.6)["promoted"] is False
    assert _decide(None, None, champion=None, champion_lm=None)["promoted"] is False
    assert decide("v2", {}, LM, CHAMP, {"mAP@.5": 0.5}, LM, PromotionPolicy())["promoted"] is False
    assert _decide(0.6, None)["promoted"] is False  # champion couldn't be scored: keep it


def test_decide_added_class():
    added = {**LM, "emu": 3}
    refused = _decide(0.9, 0.1, challenger_lm=added)
    assert refused["promoted"] is False and "emu" in refused["reason"]
    assert refused["label_map_diff"]["added"] == ["emu"]
    allowed = _decide(0.1, 0.9, PromotionPolicy(on_label_map_change="promote_if_only_added"), challenger_lm=added)
    assert allowed["promoted"] is True
    assert "warning" in allowed["reason"] and "emu" in allowed["reason"]
    assert (allowed["challenger_score"], allowed["champion_score"]) == (0.1, 0.9)  # recorded, not compared


@pytest.mark.parametrize("policy", ["refuse", "promote_if_only_added"])
@pytest.mark.parametrize("challenger_lm", [{"cat": 2, "dog": 1}, {"cat": 1}, {"cat": 1, "emu": 2}])
def test_decide_renumbered_or_removed_refused_under_every_policy(policy, challenger_lm):
    d = _decide(0.99, 0.1, PromotionPolicy(on_label_map_change=policy), challenger_lm=challenger_lm)
    assert d["promoted"] is False
    assert "label map" in d["reason"]


# --- promote_if_better end to end ----------------------------------------------------------------


class StubEvaluate:
    """The caller's evaluate_fn: scores a model dir on the current val split (here: a fixed answer)."""

    def __init__(self, metrics: dict):
        self.metrics = metrics
        self.calls: list[Path] = []

    def __call__(self, model_dir: Path) -> dict:
        self.calls.append(Path(model_dir))
        return self.metrics


def decisions(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "decisions.jsonl").read_text().splitlines()]


def test_promote_if_better_end_to_end(tmp_path):
    root = tmp_path / "MODELS"
    policy = PromotionPolicy(tolerance=0.01)

    # 1. first model: no champion, promoted, evaluate_fn not needed
    v1 = make_version(root, 0.50)
    stub = StubEvaluate({"mAP@.5": 0.0})
    d1 = registry.promote_if_better(root, v1, stub, policy)
    assert d1["promoted"] is True and stub.calls == []
    assert registry.read_champion(root)["version"] == v1
    assert registry.read_champion(root)["metrics"]["mAP@.5"] == 0.50
    assert json.loads((root / v1 / "decision.json").read_text()) == d1

    # 2. challenger 0.55 beats the champion's *stored* 0.50, but on the current val split the
    # champion scores 0.60: the re-scored number is the one compared, so no promotion.
    v2 = make_version(root, 0.55)
    champion_before = (root / "champion.json").read_bytes()
    stub = StubEvaluate({"mAP@.5": 0.60})
    d2 = registry.promote_if_better(root, v2, stub, policy)
    assert stub.calls == [root / v1]
    assert d2["promoted"] is False and d2["champion_score"] == 0.60 and d2["champion"] == v1
    assert (root / "champion.json").read_bytes() == champion_before
    assert json.loads((root / v2 / "decision.json").read_text()) == d2

    # 3. a better challenger is promoted, champion re-scored again
    v3 = make_version(root, 0.70)
    stub = StubEvaluate({"mAP@.5": 0.60})
    d3 = registry.promote_if_better(root, v3, stub, policy)
    assert stub.calls == [root / v1]
    assert d3["promoted"] is True
    champ = registry.read_champion(root)
    assert champ["version"] == v3 and champ["decision"] == d3

    # 4. a challenger with a new class is refused under the default policy
    v4 = make_version(root, 0.99, label_map={**LM, "emu": 3})
    stub = StubEvaluate({"mAP@.5": 0.70})
    d4 = registry.promote_if_better(root, v4, stub, PromotionPolicy())
    assert stub.calls == [root / v3]
    assert d4["promoted"] is False and d4["label_map_diff"]["added"] == ["emu"]
    assert registry.read_champion(root)["version"] == v3

    assert [d["challenger"] for d in decisions(root)] == [v1, v2, v3, v4]
    assert [d["promoted"] for d in decisions(root)] == [True, False, True, False]
    assert decisions(root) == [d1, d2, d3, d4]
    assert registry.list_versions(root) == sorted([v1, v2, v3, v4])


def test_promote_if_better_requires_committed_challenger(tmp_path):
    v = registry.new_version(tmp_path)
    Path(registry.staging_dir(tmp_path, v))
    with pytest.raises(FileNotFoundError):
        registry.promote_if_better(tmp_path, v, StubEvaluate({}), PromotionPolicy())
    assert not (tmp_path / "decisions.jsonl").exists()
    assert registry.read_champion(tmp_path) is None


# --- management by hand (ssdflow models) ------------------------------------------------------------


def test_promote_by_hand_and_roll_back_step_by_step(tmp_path):
    """Rollbacks undo promotions in reverse order (automatic and by hand alike), each recorded with
    who and why; with nothing left to undo, rollback refuses and changes nothing."""
    root = tmp_path / "MODELS"
    v1, v2, v3 = make_version(root, 0.5), make_version(root, 0.6), make_version(root, 0.4)
    registry.promote_if_better(root, v1, StubEvaluate({}))
    registry.promote_if_better(root, v2, StubEvaluate({"mAP@.5": 0.5}))
    assert registry.read_champion(root)["version"] == v2

    d = registry.promote_version(root, v3, "ana", "v3 handles the night images")  # worse on val: the person decides
    assert registry.read_champion(root)["version"] == v3
    assert (d["action"], d["by"], d["champion"], d["manual"]) == ("promote", "ana", v2, True)
    assert "v3 handles the night images" in d["reason"]
    assert registry.champion_history(root) == [v1, v2, v3]
    with pytest.raises(ValueError, match="already the champion"):
        registry.promote_version(root, v3, "ana", "again")

    first = registry.rollback(root, "ben", "v3 misses raccoons")
    assert registry.read_champion(root)["version"] == v2 and first["champion"] == v3 and first["by"] == "ben"
    registry.rollback(root, "ben", "v2 too")
    assert registry.read_champion(root)["version"] == v1
    before = (root / "champion.json").read_bytes(), (root / "decisions.jsonl").read_bytes()
    with pytest.raises(ValueError, match="no previous champion"):
        registry.rollback(root, "ben", "one more")
    assert ((root / "champion.json").read_bytes(), (root / "decisions.jsonl").read_bytes()) == before
    assert [(x.get("action"), x["challenger"]) for x in decisions(root) if x["promoted"]] == [
        (None, v1),
        (None, v2),
        ("promote", v3),
        ("rollback", v2),
        ("rollback", v1),
    ]


def test_promote_by_hand_refuses_what_is_not_committed(tmp_path):
    root = tmp_path / "MODELS"
    make_version(root, 0.5)
    staging = registry.new_version(root)
    Path(registry.staging_dir(root, staging))
    for version in (staging, "20990101T000000Z-0000"):
        with pytest.raises(FileNotFoundError):
            registry.promote_version(root, version, "ana", "why")
    with pytest.raises(ValueError):
        registry.promote_version(root, "../escape", "ana", "why")
    assert registry.read_champion(root) is None


def test_history_explains_a_champion_the_log_does_not(tmp_path):
    """A champion.json without decisions (an older ssdflow, or the log lost) is still the current
    champion; a torn last log line is skipped."""
    root = tmp_path / "MODELS"
    v1, v2 = make_version(root, 0.5), make_version(root, 0.6)
    registry.promote_if_better(root, v1, StubEvaluate({}))
    registry.set_champion(root, v2, {"reason": "written by hand"})
    with open(root / "decisions.jsonl", "a") as f:
        f.write('{"promoted": true, "challen')
    assert registry.champion_history(root) == [v1, v2]
    assert [r["champion"] for r in registry.describe_versions(root)] == [False, True]
    registry.rollback(root, "ana", "v2 was never decided")
    assert registry.read_champion(root)["version"] == v1
    assert registry.champion_history(root) == [v1]  # the rollback's line survived the torn one before it
    assert registry.read_decisions(root)[-1]["action"] == "rollback"
