"""One boto3 S3 client per process and settings, shared by every call of Beam's S3 filesystem.

Beam 2.77's ``S3FileSystem`` builds a new ``S3IO`` for every call (each open, match, exists,
size, copy, delete), and each ``S3IO`` a new boto3 Session and client. Building a client parses
botocore's service definitions: about 0.19 s of CPU here, measured (docs/benchmarks.md, "Scoring
from S3"), which is more than scoring a small image costs, and every image read pays it again.

boto3's low-level clients are thread-safe (boto3's documentation, "Multithreading"), so one per
set of connection settings serves a whole process. :func:`share_s3_clients` puts a stand-in for
the ``boto3`` name inside Beam's client wrapper (``apache_beam.io.aws.clients.s3.boto3_client``)
whose ``session.Session().client(**settings)`` returns that process's client for those settings;
the wrapper's own per-download state (``_download_stream`` …) stays per instance, as Beam wrote it.
The key is the process id, the settings (endpoint, region, credentials flags) and the ``AWS_*``
environment that botocore reads when it builds a client (credentials, ``AWS_MAX_ATTEMPTS``,
``AWS_RETRY_MODE``, ``AWS_PROFILE`` …), so a forked worker builds its own, two jobs with different
endpoints never share one, and a changed environment gets a client that sees the change.
"""

from __future__ import annotations

import os
import threading
import types

_clients: dict[tuple, object] = {}
_lock = threading.Lock()


def shared_client(**settings):
    """boto3's S3 client for these ``session.client`` keyword arguments, built once per process."""
    import boto3

    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    key = (os.getpid(), tuple(sorted(settings.items())), env)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = boto3.session.Session().client(**settings)
    return client


class _Session:
    """What Beam's wrapper calls: ``boto3.session.Session().client(service_name='s3', …)``."""

    def client(self, **settings):
        return shared_client(**settings)


def share_s3_clients() -> bool:
    """Makes Beam's S3 filesystem reuse one client per process and settings (idempotent); False
    where Beam's AWS extra (boto3) is not installed, and there is nothing to share."""
    try:
        from apache_beam.io.aws.clients.s3 import boto3_client
    except ImportError:
        return False
    if boto3_client.boto3 is None:
        return False
    if not isinstance(boto3_client.boto3, types.SimpleNamespace):
        boto3_client.boto3 = types.SimpleNamespace(session=types.SimpleNamespace(Session=_Session))
    return True
