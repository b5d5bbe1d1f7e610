"""Entry point of the local DirectRunner's worker processes (``multi_processing`` mode).

Beam starts each worker as ``python -m apache_beam.runners.worker.sdk_worker_main``; that harness
logs its start-up at INFO on stderr (channels opened, "sdk harness starting" …), logs a warning
about a semi-persistent directory that only a container worker has, and imports Beam's GCP module,
whose "apitools not found" warning is a false alarm for ssdflow. On a user's console, twice per
core, that is noise. :class:`ssdflow.beam_runner.LocalRunner` starts this module instead: the
same harness, with ssdflow's false-alarm filter and warnings and errors only on stderr. Started
with ``--await-job`` (by :mod:`ssdflow.patches.worker_pool`, before the job exists), it imports first and
then reads the job's connection details from stdin.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys

import ssdflow  # noqa: F401  (installs the false-alarm filter before Beam's modules are imported)

AWAIT_JOB = "--await-job"  # started by ssdflow.patches.worker_pool: wait on stdin for the job's environment

# Logged by the harness when no semi-persistent directory is provided, which only a container
# worker has: local workers unpickle with the job's own modules and lose nothing.
_NO_DIRECTORY = "No semi_persistent_directory found"


def main() -> None:
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(console)  # so that Beam's later logging.basicConfig() adds no INFO handler
    logging.getLogger().setLevel(logging.WARNING)
    from apache_beam.runners.worker import sdk_worker_main

    from ssdflow.patches.s3_clients import share_s3_clients

    share_s3_clients()  # before any bundle: Beam's reads of Beam-only stages (matching files) too

    logging.getLogger(sdk_worker_main.__name__).addFilter(lambda r: not str(r.msg).startswith(_NO_DIRECTORY))
    if AWAIT_JOB in sys.argv:  # started ahead of the job (ssdflow.patches.worker_pool): load, then wait for it
        for module in sys.argv[sys.argv.index(AWAIT_JOB) + 1 :]:
            try:
                importlib.import_module(module)
            except Exception:  # noqa: BLE001  a head start only: the job's own unpickling raises the real error
                pass
        line = sys.stdin.readline()
        if not line:  # the driver ended, or its run did not need this worker
            os._exit(0)
        os.environ.update(json.loads(line))
    sdk_worker_main.main(sys.argv)
    # The harness returns once the runner has said it is done: every bundle finished, its files
    # closed. The runner waits for this process to exit before the job can commit, and the
    # interpreter's teardown (thousands of Beam modules, gRPC threads) takes about half a second
    # per job on 2 busy cores, so skip it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
