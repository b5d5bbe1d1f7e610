"""Runs a Beam service module (job service, worker pool) with every gRPC server bound to 127.0.0.1.

Beam binds its servers to ``[::]`` (all interfaces) with no flag to change it; tests must only
listen on loopback, so this launcher rewrites the bind address before running the module::

    python -m tests.loopback_beam apache_beam.runners.worker.worker_pool_main --service_port 5000
"""

import runpy
import sys

import grpc

_server = grpc.server


def _loopback_server(*args, **kwargs):
    server = _server(*args, **kwargs)
    add = server.add_insecure_port
    server.add_insecure_port = lambda address: add(address.replace("[::]", "127.0.0.1").replace("0.0.0.0", "127.0.0.1"))
    return server


if __name__ == "__main__":
    grpc.server = _loopback_server
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
