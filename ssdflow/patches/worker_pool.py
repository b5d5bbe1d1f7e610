"""Local Beam worker processes started before the pipeline runs.

The FnApiRunner starts its ``multi_processing`` workers when the first stage runs, and each then
spends most of a second importing Beam and the job's modules before it takes any work: on the
job's critical path, every run. :class:`WorkerPool` starts them when the pipeline is made, so those
imports overlap the pipeline's construction; each process then waits on its stdin for the job's
connection details (what Beam passes its workers in the environment) and runs Beam's harness.

:class:`PrewarmedWorkerHandler` is the runner's side: registered for :data:`URN`, it takes a process
from the pool named by its environment's payload (or starts one, if the runner asks for more
workers than were started) where Beam's ``SubprocessSdkWorkerHandler`` would start a fresh
``python -m …`` command. A process that never gets a job reads end-of-file and exits, so no
worker outlives its driver; :meth:`WorkerPool.close` ends those a finished run did not use.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
import weakref

import grpc
from apache_beam.portability.api import beam_fn_api_pb2_grpc, endpoints_pb2
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.portability.local_job_service import BeamFnLoggingServicer
from apache_beam.utils import thread_pool_executor
from google.protobuf import json_format, text_format

from ssdflow.patches.beam_worker import AWAIT_JOB

URN = "ssdflow:env:prewarmed_subprocess:v1"
_POOLS: weakref.WeakValueDictionary[str, WorkerPool] = weakref.WeakValueDictionary()  # alive while its runner is
_LOCK = threading.Lock()


def start_worker_process(preload: tuple[str, ...] = ()) -> subprocess.Popen:
    """``python -m ssdflow.patches.beam_worker --await-job [MODULE …]``: imports Beam's harness and the
    named modules, then blocks reading one JSON line of environment variables from stdin."""
    with worker_handlers.SUBPROCESS_LOCK:  # Beam's own guard around forking from a threaded runner
        return subprocess.Popen(
            [sys.executable, "-m", "ssdflow.patches.beam_worker", AWAIT_JOB, *preload], stdin=subprocess.PIPE
        )


def _end(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        proc.stdin.close()  # end-of-file: a waiting worker exits without a job
    for proc in processes:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class WorkerPool:
    """``size`` worker processes started now, handed out by :meth:`take` (by pool id, see URN)."""

    def __init__(self, size: int, preload: tuple[str, ...] = ()):
        self.id = uuid.uuid4().hex
        self.preload = tuple(preload)
        self._idle = [start_worker_process(self.preload) for _ in range(size)]
        _POOLS[self.id] = self
        # A pipeline that is built but never run (an error while building it) must not leave its
        # waiting workers behind until the driver exits.
        self._finalizer = weakref.finalize(self, _end, self._idle)

    @property
    def waiting(self) -> tuple[subprocess.Popen, ...]:
        """The started processes no run has taken yet."""
        return tuple(self._idle)

    def take(self) -> subprocess.Popen:
        """A started worker, or a new one when every started one is taken (or has died)."""
        with _LOCK:
            proc = self._idle.pop() if self._idle else None
        if proc is not None and proc.poll() is None:
            return proc
        return start_worker_process(self.preload)

    def close(self) -> None:
        """Ends the workers no run took; the pool hands out fresh processes from here on."""
        with _LOCK:
            idle = list(self._idle)
            self._idle.clear()
        _end(idle)


@worker_handlers.WorkerHandler.register_environment(URN, bytes)
class PrewarmedWorkerHandler(worker_handlers.GrpcWorkerHandler):
    """Beam's SubprocessSdkWorkerHandler, with the process taken from a :class:`WorkerPool`."""

    def __init__(self, pool_id: bytes, state, provision_info, grpc_server):
        super().__init__(state, provision_info, grpc_server)
        self._pool_id = pool_id.decode()
        self._thread: threading.Thread | None = None

    def start_worker(self) -> None:
        found = _POOLS.get(self._pool_id)
        proc = found.take() if found is not None else start_worker_process()
        self._thread = threading.Thread(name="run_worker", target=self._run, args=(proc,), daemon=True)
        self._thread.start()

    def _run(self, proc: subprocess.Popen) -> None:
        # The worker's log records come back over gRPC, as for Beam's own subprocess workers.
        logging_server = grpc.server(
            thread_pool_executor.shared_unbounded_instance(),
            options=[("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)],
        )
        beam_fn_api_pb2_grpc.add_BeamFnLoggingServicer_to_server(BeamFnLoggingServicer(), logging_server)
        port = logging_server.add_insecure_port("127.0.0.1:0")
        logging_server.start()
        env = {
            "CONTROL_API_SERVICE_DESCRIPTOR": text_format.MessageToString(
                endpoints_pb2.ApiServiceDescriptor(url=self.control_address)
            ),
            "LOGGING_API_SERVICE_DESCRIPTOR": text_format.MessageToString(
                endpoints_pb2.ApiServiceDescriptor(url=f"127.0.0.1:{port}")
            ),
            "PIPELINE_OPTIONS": json_format.MessageToJson(self.provision_info.provision_info.pipeline_options),
            "WORKER_ID": self.worker_id,
        }
        try:
            proc.stdin.write((json.dumps(env) + "\n").encode())
            proc.stdin.close()
            proc.wait()
            if proc.returncode:
                raise RuntimeError(f"Worker subprocess exited with return code {proc.returncode}")
        finally:
            if proc.poll() is None:
                proc.kill()
            logging_server.stop(0)

    def stop_worker(self) -> None:
        if self._thread is not None:
            self._thread.join()
