"""A person's path through the Prefect UI, in a real browser (Debian's chromium driven by Playwright):
open the batch-score deployment, Run → Custom run, change a parameter, Submit, see the run complete."""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import raccoon_or_skip, raccoon_subset
from tests.prefect_stack import prefect_stack, request, wait_for_run

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture()
def stack(tmp_path, raccoon_model):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium")
    root = raccoon_or_skip()
    images, _ = raccoon_subset(tmp_path, 6, labels=False)
    params = tmp_path / "params.json"
    ingest = {
        "images": str(images),
        "labels": str(root / "annotations"),
        "format": "voc",
        "out": str(tmp_path / "records"),
    }
    params.write_text(
        json.dumps(
            {
                "nightly": {"ingest": ingest, "models": str(tmp_path / "models")},
                "score": {
                    "model": raccoon_model,
                    "images": [str(images)],
                    "out": str(tmp_path / "scored"),
                    "score_threshold": 0.3,
                },
            }
        )
    )
    with prefect_stack(tmp_path / "prefect", tmp_path / "home", ["--config", str(params)]) as s:
        yield s, tmp_path


def test_custom_run_of_batch_score_from_the_ui(stack):
    from playwright.sync_api import expect, sync_playwright

    s, tmp_path = stack
    dep = s["deployments"]["batch-score"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page()
        # The UI tries an outside analytics host; nothing may leave loopback.
        page.route(
            "**/*",
            lambda route: (
                route.continue_()
                if route.request.url.startswith(("http://127.0.0.1", "data:", "blob:"))
                else route.abort()
            ),
        )
        page.goto(f"{s['url']}/v2/deployments/deployment/{dep['id']}")
        page.get_by_role("button", name="Run", exact=True).first.click()
        page.get_by_role("menuitem", name="Custom run").click()
        # A number or auto (None): two tabs, named by the schema's member titles; the number's is chosen here.
        number = page.get_by_role("tab", name="one number for every class")
        expect(number).to_be_visible(timeout=30_000)
        expect(page.get_by_role("tab", name="auto (calibrated per class)")).to_be_visible()
        if number.get_attribute("aria-selected") != "true":  # the deployment's default is a number: already chosen
            number.click()
        field = page.get_by_role("tabpanel", name="one number for every class").get_by_role("spinbutton")
        field.fill("0.05")
        expect(field).to_have_value("0.05")
        field.press("Tab")  # the form takes the value on change
        submit = page.get_by_role("button", name="Submit")
        expect(submit).to_be_enabled(timeout=30_000)
        # What the page asks of the API once submitted: said when no run appears.
        calls, sent = [], []
        page.on("request", lambda r: sent.append(r.url) if "/api/" in r.url and r.method != "GET" else None)
        page.on(
            "response",
            lambda r: (
                calls.append(f"{r.request.method} {r.url.split('/api/')[-1]} → {r.status}")
                if "/api/" in r.url and r.request.method != "GET"
                else None
            ),
        )
        page.on("requestfailed", lambda r: calls.append(f"{r.method} {r.url} failed: {r.failure}"))
        submit.click()
        # The run's creation is what the form is for: waited on through the API (with 2 other test
        # workers loading both cores the server can take minutes), then the UI's move to the runs tab.
        # Clicked once more, as a person would, where the first click cannot have made a run: the
        # page sent no create_flow_run request within 60 s (twice in ~10 loaded suite runs), or the
        # server answered it 503 (seen once: Prefect's SQLite database could not take the write lock
        # at once; it writes nothing and its Python client retries, its UI does not).
        runs, retried = [], False
        for attempt in range(360):
            _, runs = request("POST", f"{s['api']}/flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}}})
            if runs:
                break
            refused = any("create_flow_run" in c and c.endswith("→ 503") for c in calls)
            never_sent = attempt >= 120 and not any("create_flow_run" in u for u in sent)
            if not retried and (refused or never_sent) and submit.is_visible():
                retried = True
                page.screenshot(path=str(tmp_path / "before-second-click.png"), full_page=True)
                calls.append(
                    "(create_flow_run answered 503: clicked again)"
                    if refused
                    else "(no create_flow_run request 60 s after Submit: clicked again)"
                )
                submit.click()
            page.wait_for_timeout(500)
        if not runs:
            page.screenshot(path=str(tmp_path / "no-run.png"), full_page=True)
        assert runs, (
            f"the form was submitted and no run was created; the page's calls after Submit: {calls}; it said: "
            f"{page.inner_text('body')[-1500:]!r}"
        )
        page.wait_for_url("**tab=Runs**", timeout=120_000)  # the UI shows the deployment's runs
        assert len(runs) == 1, runs  # exactly one run was created by the form
        run = wait_for_run(s["api"], runs[0]["id"], timeout=300)
        page.reload()
        expect(page.get_by_text(runs[0]["name"]).first).to_be_visible(timeout=30_000)
        expect(page.get_by_text("Completed").first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(tmp_path / "completed-run.png"))
        browser.close()
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["parameters"]["config"]["score_threshold"] == 0.05  # the value typed in the form
    manifest = json.loads((tmp_path / "scored" / "_SUCCESS").read_text())
    assert manifest["images_in"] == 6 and manifest["images_scored"] == 6
