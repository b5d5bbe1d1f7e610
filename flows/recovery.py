"""Crash recovery for served runs: heartbeats, a detector for silent runs, bounded automatic reruns.

A self-hosted Prefect server does nothing when the process running a flow dies (a SIGKILL, an
out-of-memory kill, a lost machine): the run stays RUNNING forever. ``ssdflow serve`` therefore
sets up what Prefect documents for self-hosted servers, scoped to ssdflow's runs (tag ``ssdflow``):

1. flow runs send a heartbeat event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds
   (``heartbeat_env``, 30 s: Prefect's minimum);
2. automation ``ssdflow: mark silent runs crashed``: after a heartbeat of an ssdflow run, expect
   another heartbeat or a terminal state within ``silence_seconds``; if none comes, the run is set
   to CRASHED;
3. automation ``ssdflow: rerun crashed runs``: when an ssdflow run enters CRASHED, run the same
   deployment again with the crashed run's ``config`` and ``attempt + 1``.

The reruns are bounded by the flows' own parameter schema: ``attempt`` is at most
``MAX_RERUNS`` and deployments enforce their schema, so the server refuses the rerun past the
bound (HTTP 409, recorded on the automation's action) and a run that always crashes stops there.
A rerun is safe because every job is idempotent: ingest and scoring commit atomically (scoring
resumes from its committed chunks) and a rerun of training resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated

from pydantic import Field

log = logging.getLogger(__name__)

TAG = "ssdflow"
HEARTBEAT_SECONDS = 30  # Prefect's minimum
SILENCE_SECONDS = 90  # three heartbeats missed: dead, not merely busy
MAX_RERUNS = 2
SILENT_AUTOMATION = "ssdflow: mark silent runs crashed"
RERUN_AUTOMATION = "ssdflow: rerun crashed runs"
TERMINAL_EVENTS = (
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
)

Attempt = Annotated[
    int,
    Field(
        ge=0,
        le=MAX_RERUNS,
        description=(
            "Set by the crash-rerun automation (0 for a run you start): how many times this work was rerun after a crash"
        ),
    ),
]


def heartbeat_env(seconds: int = HEARTBEAT_SECONDS) -> dict[str, str]:
    """Environment for the serving process: its flow-run subprocesses inherit it."""
    return {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(max(seconds, HEARTBEAT_SECONDS))}


def _json_template(expression: str) -> dict:
    """A RunDeployment parameter rendered from the triggering run, keeping its JSON type."""
    return {
        "__prefect_kind": "json",
        "value": {"__prefect_kind": "jinja", "template": "{{ (" + expression + ") | tojson }}"},
    }


def automations(silence_seconds: int = SILENCE_SECONDS) -> list:
    """The two automations (not yet created on the server)."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState, RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture

    ours = {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{TAG}"}
    silent = Automation(
        name=SILENT_AUTOMATION,
        description=f"An ssdflow flow run that sent no heartbeat for {silence_seconds}s has lost its process: mark it Crashed.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=ours,
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *TERMINAL_EVENTS},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=silence_seconds),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {silence_seconds}s: the process running this flow is gone",
            )
        ],
    )
    rerun = Automation(
        name=RERUN_AUTOMATION,
        description=f"Run a crashed ssdflow flow run's deployment again with the same config (at most {MAX_RERUNS} times).",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=ours,
            expect={"prefect.flow-run.Crashed"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            RunDeployment(
                source="inferred",
                parameters={
                    "config": _json_template("flow_run.parameters['config']"),
                    "attempt": _json_template("(flow_run.parameters['attempt'] | default(0)) + 1"),
                },
            )
        ],
    )
    return [silent, rerun]


def _definition(automation) -> dict:
    """What an automation does, without the ids the server assigns."""
    data = automation.model_dump(mode="json", include={"name", "description", "enabled", "trigger", "actions"})
    data["trigger"].pop("id", None)
    # The trigger's event sets come out as lists in set order, which follows string hashing and so
    # differs between processes: compared as lists, an unchanged automation would look changed to a
    # restarted serve, be replaced, and lose the heartbeats that start a dead run's clock.
    for key in ("after", "expect", "for_each"):
        data["trigger"][key] = sorted(data["trigger"].get(key) or [])
    return data


def ensure_automations(silence_seconds: int = SILENCE_SECONDS) -> list[str]:
    """Creates the automations, or updates them by name when their definition changed.

    An unchanged automation is left alone: updating it replaces its trigger, and with it the
    server's record of the heartbeats already seen. A run that died while serve was down would
    then never be noticed, because a dead run sends no further heartbeat to start the clock.
    """
    from prefect.automations import Automation

    names = []
    for wanted in automations(silence_seconds):
        try:
            existing = Automation.read(name=wanted.name)
        except ValueError:
            existing = None
        if existing is None:
            wanted.create()
        elif _definition(existing) != _definition(wanted):
            wanted.id = existing.id
            wanted.update()
        names.append(wanted.name)
    log.info("automations: %s", ", ".join(names))
    return names
