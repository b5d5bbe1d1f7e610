"""Runs a Beam service module (job service, worker pool) with every gRPC server bound to 127.0.0.1.

Beam binds its servers to ``[::]`` (all interfaces) with no flag to change it; tests must only
listen on loopback, so this launcher rewrites the bind address before running the module. Given
port 0 the kernel picks a free port (no other test can take it between choosing and binding, as
with a port chosen beforehand: gRPC binds with SO_REUSEPORT, so two servers would share it and split
the connections); with LOOPBACK_BEAM_PORT_FILE set, the first server's port is written there::

    python -m tests.loopback_beam apache_beam.runners.worker.worker_pool_main --service_port 0
"""

import os
import runpy
import sys

import grpc

_server = grpc.server


def _loopback_server(*args, **kwargs):
    server = _server(*args, **kwargs)
    add = server.add_insecure_port

    def add_loopback_port(address: str) -> int:
        port = add(address.replace("[::]", "127.0.0.1").replace("0.0.0.0", "127.0.0.1"))
        port_file = os.environ.pop("LOOPBACK_BEAM_PORT_FILE", None)  # the module's own server is its first
        if port_file:
            from ssdflow.storage import atomic_write_local  # whole or absent: the test reads it as soon as it exists

            atomic_write_local(port_file, str(port))
        return port

    server.add_insecure_port = add_loopback_port
    return server


if __name__ == "__main__":
    grpc.server = _loopback_server
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
