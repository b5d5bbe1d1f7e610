"""Flow logic under prefect_test_harness (a temporary Prefect server in-process)."""

from __future__ import annotations

import os
import pytest

# Imported at collection, before any test has started threads: importing Prefect's server modules
# compiles some through beartype's import hook, and CPython 3.11.7's AST constructor can raise a
# spurious "recursion depth mismatch" SystemError when other threads run meanwhile (cpython#106905).
from prefect.testing.utilities import prefect_test_harness

from tests.helpers import raccoon_subset

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_ingest_flow_is_cached_while_inputs_and_output_are_unchanged(harness, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.jobs import ingest_flow
    from ssdflow.config import IngestConfig

    images, labels = raccoon_subset(tmp_path, 8)
    cfg = IngestConfig(images=str(images), labels=str(labels), format="voc", out=str(tmp_path / "out"))

    def ingest_state(state):
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs()
        run = [r for r in runs if r.flow_run_id == state.state_details.flow_run_id and r.name.startswith("ingest")]
        return run[0].state.name

    first = ingest_flow(cfg, return_state=True)
    assert first.is_completed() and first.result()["images_in"] == 8
    assert ingest_state(first) == "Completed"
    second = ingest_flow(cfg, return_state=True)
    assert ingest_state(second) == "Cached"

    raccoon_subset(tmp_path, 1, start=9)  # new data: the fingerprint changes
    third = ingest_flow(cfg, return_state=True)
    assert ingest_state(third) == "Completed" and third.result()["images_in"] == 9

    os.remove(tmp_path / "out" / "_SUCCESS")  # output gone: no stale cache hit
    fourth = ingest_flow(cfg, return_state=True)
    assert ingest_state(fourth) == "Completed"


def test_flow_parameters_are_validated(harness):
    from prefect.exceptions import ParameterTypeError

    from flows.jobs import ingest_flow

    with pytest.raises(ParameterTypeError, match="format"):
        ingest_flow({"images": "/x", "labels": "/y", "format": "pascal", "out": "/z"})
