"""A real Prefect server on 127.0.0.1 plus `ssdflow serve` against it, for integration and browser tests."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from tests.helpers import REPO, free_port, stop_process, wait_for_port


def env(home, api_url=None) -> dict:
    e = dict(
        os.environ,
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PREFECT_LOGGING_LEVEL="INFO",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    e.pop("PREFECT_API_URL", None)
    if api_url:
        e["PREFECT_API_URL"] = api_url
        e["PREFECT_UI_API_URL"] = api_url
    return e


def request(method: str, url: str, body=None, retries: int = 5, auth: str | None = None) -> tuple[int, dict | list]:
    """One API call (``auth``: the server's "user:password", sent as HTTP Basic). A busy server on 2 cores
    can answer 502/503/504 for a moment; like Prefect's own client (PREFECT_CLIENT_MAX_RETRIES), retry
    those with backoff. Every other status is returned."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    for attempt in range(retries + 1):
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            if e.code in (502, 503, 504) and attempt < retries:
                time.sleep(2**attempt)
                continue
            return e.code, json.loads(e.read() or b"null")
    raise AssertionError("unreachable")


class Serving:
    """`ssdflow serve` in its own process group, which a test may kill (SIGKILL) and start again."""

    def __init__(self, api: str, prefect_home, work_home, serve_args=(), extra_env=None):
        self.api, self.prefect_home, self.work_home, self.serve_args = api, prefect_home, work_home, list(serve_args)
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 180) -> dict:
        """Starts serve and waits until its deployments are registered; returns them by name."""
        self.starts += 1
        log = open(self.prefect_home / f"serve-{self.starts}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ssdflow.cli", "serve", "--home", str(self.work_home), *self.serve_args],
            cwd=REPO,
            env={**env(self.prefect_home, self.api), **self.extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        deployments = []
        while time.time() < deadline and self.proc.poll() is None:
            status, deployments = request("POST", f"{self.api}/deployments/filter", {})
            # Registered and polling (after a restart the deployments exist before serve is up).
            if status == 200 and len(deployments) >= 5 and "being served and polling" in self.log_text():
                break
            time.sleep(1)
        assert len(deployments) >= 5, self.log_text()[-3000:]
        return {d["name"]: d for d in deployments}

    def log_text(self) -> str:
        return (self.prefect_home / f"serve-{self.starts}.log").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group: serve and the flow-run processes it started die at once."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=20)


@contextlib.contextmanager
def prefect_server(prefect_home, auth: str | None = None):
    """A `prefect server` on 127.0.0.1 with its own PREFECT_HOME (and, given ``auth``, requiring it:
    PREFECT_SERVER_API_AUTH_STRING); yields its API URL; stopped by PID at exit."""
    prefect_home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_env = env(prefect_home, api)
    if auth:
        server_env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env,
        stdout=open(prefect_home / "server.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(port, timeout=120, proc=server)
        deadline = time.time() + 120
        while request("GET", f"{api}/health")[0] != 200 and time.time() < deadline:
            time.sleep(0.5)
        yield api
    finally:
        stop_process(server, timeout=20)


@contextlib.contextmanager
def prefect_stack(prefect_home, work_home, serve_args=(), serve_env=None):
    """Yields {"api", "url", "deployments" (by name), "home", "serving"}; both processes are stopped by PID at exit.
    ``serve_env``: extra environment of `ssdflow serve` and the flow runs it starts."""
    with prefect_server(prefect_home) as api:
        serving = Serving(api, prefect_home, work_home, serve_args, serve_env)
        try:
            deployments = serving.start()
            yield {
                "api": api,
                "url": api.removesuffix("/api"),
                "deployments": deployments,
                "home": prefect_home,
                "serving": serving,
            }
        finally:
            serving.stop()


def wait_for_run(api: str, run_id: str, timeout: float = 600, auth: str | None = None) -> dict:
    deadline = time.time() + timeout
    run = {}
    while time.time() < deadline:
        _, run = request("GET", f"{api}/flow_runs/{run_id}", auth=auth)
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    raise TimeoutError(f"flow run {run_id} still {run.get('state_type')} after {timeout}s")
