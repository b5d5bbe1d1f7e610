"""A fault-injecting HTTP proxy in front of moto's S3 server, for storage-fault tests.

Point a client's endpoint at ``proxy.url`` instead of moto's: every request is forwarded to moto
unchanged (method, path, query, headers, body: the SigV4 signature still matches, since the Host
header is passed through), except that chosen *upload* requests (PUT and POST: PutObject,
CreateMultipartUpload, UploadPart, CompleteMultipartUpload, CopyObject, DeleteObjects) are answered
by the proxy itself with an S3 error — 503 ``SlowDown`` by default, or 500 ``InternalError`` —
without reaching moto, as S3 does when it throttles. Which uploads fail:

* ``fail_every=k``: the k-th, 2k-th, ... upload request (counted over the proxy's lifetime);
* ``fail_first=n``: the first n upload requests (a burst: consecutive failures, retries included);
* ``fail_when=callable(method, path_with_query) -> bool``: narrows which requests count as uploads.
* ``methods=("GET", "HEAD")``: reads fail instead (uploads by default; reset by every ``configure``).

``injected`` counts the answers the proxy made up; ``log`` holds (method, path, status, injected)
for every request, so a test can check that each injected failure was followed by a successful
retry of the same request; ``access_key_ids`` says which access keys signed the requests.
"""

from __future__ import annotations

import http.client
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

UPLOAD_METHODS = ("PUT", "POST")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
}
ERRORS = {
    503: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    429: ("TooManyRequests", "Please reduce your request rate."),
}  # retried by neither botocore nor Beam: fast tests


def operation(method: str, path: str) -> str:
    """The S3 operation of an upload request, from its method and query string."""
    query = urlsplit(path).query
    if method == "POST":
        return (
            "CreateMultipartUpload"
            if "uploads" in query.split("&")
            else (
                "CompleteMultipartUpload"
                if "uploadId=" in query
                else "DeleteObjects"
                if "delete" in query.split("&")
                else "POST"
            )
        )
    if method == "PUT":
        return "UploadPart" if "partNumber=" in query else "PutObject/CopyObject"
    return method


class FaultyS3Proxy:
    def __init__(
        self,
        upstream: str,
        *,
        fail_every: int = 0,
        fail_first: int = 0,
        status: int = 503,
        fail_when=None,
        methods: tuple[str, ...] = UPLOAD_METHODS,
        host: str = "127.0.0.1",
    ):
        if status not in ERRORS:
            raise ValueError(f"status must be one of {sorted(ERRORS)}")
        up = urlsplit(upstream)
        self.upstream_host, self.upstream_port = up.hostname, up.port or 80
        self.fail_every, self.fail_first, self.status, self.fail_when = fail_every, fail_first, status, fail_when
        self.methods = methods
        self.uploads = 0  # upload requests seen (each retry counts again)
        self.injected = 0  # of which answered with an injected error
        self.log: list[tuple[str, str, int, bool]] = []
        self.access_key_ids: set[str] = set()  # from each request's SigV4 Credential scope: which keys signed
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._stopped = False

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultyS3Proxy":
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-s3", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        # A kept-alive connection (a boto3 client cached for the process) outlives serve_forever in its
        # handler thread: its next request is answered 503 and the connection closed (see _handle).
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "FaultyS3Proxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def configure(
        self,
        *,
        fail_every: int | None = None,
        fail_first: int | None = None,
        status: int | None = None,
        fail_when=...,
        methods: tuple[str, ...] = UPLOAD_METHODS,
    ) -> None:
        """Changes the fault plan (and resets the counters) between runs; ``methods`` is reset to the
        uploads unless given, so a test that fails reads leaves no trap for the next."""
        with self._lock:
            self.methods = methods
            if fail_every is not None:
                self.fail_every = fail_every
            if fail_first is not None:
                self.fail_first = fail_first
            if status is not None:
                self.status = status
            if fail_when is not ...:
                self.fail_when = fail_when
            self.uploads = self.injected = 0
            self.log = []
            self.access_key_ids = set()

    # --- the fault plan ------------------------------------------------------------------------
    def _decide(self, method: str, path: str) -> bool:
        """Whether this request gets an injected error (called once per request, under the lock)."""
        if method not in self.methods or (self.fail_when is not None and not self.fail_when(method, path)):
            return False
        self.uploads += 1
        fail = (self.fail_first and self.uploads <= self.fail_first) or (
            self.fail_every and self.uploads % self.fail_every == 0
        )
        if fail:
            self.injected += 1
        return bool(fail)

    def injected_operations(self) -> set[str]:
        """The S3 operations that got an injected error."""
        return {operation(m, p) for m, p in self.injected_requests()}

    def injected_requests(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _, inj in self.log if inj]

    def retried_ok(self, method: str, path: str) -> bool:
        """Whether an injected failure of (method, path) was followed by a successful identical request."""
        seen_failure = False
        for m, p, status, inj in self.log:
            if (m, p) != (method, path):
                continue
            if inj:
                seen_failure = True
            elif seen_failure and status < 300:
                return True
        return False

    # --- HTTP ----------------------------------------------------------------------------------
    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects

            def log_message(self, *args):  # quiet: pytest output is for failures
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return bytes(data)
                        data += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _reply(self, status: int, message: bytes) -> None:
                self.close_connection = True
                self.send_response(status)
                self.send_header("Content-Length", str(len(message)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(message)

            def _handle(self):
                body = self._body()  # always drained first: the connection stays usable after an injected error
                if (
                    proxy._stopped
                ):  # a later test's process-wide client on an earlier test's connection: no traceback there
                    self._reply(503, b"faulty-s3 proxy stopped")
                    return
                credential = re.search(r"Credential=([^/,\s]+)/", self.headers.get("Authorization", ""))
                with proxy._lock:
                    if credential:
                        proxy.access_key_ids.add(credential.group(1))
                    inject = proxy._decide(self.command, self.path)
                if inject:
                    code, message = ERRORS[proxy.status]
                    xml = (
                        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                        f"<RequestId>{uuid.uuid4().hex[:16]}</RequestId></Error>"
                    ).encode()
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    with proxy._lock:
                        proxy.log.append((self.command, self.path, proxy.status, True))
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body or self.command in UPLOAD_METHODS:
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    try:
                        conn.request(
                            self.command,
                            self.path,
                            body=body if body or self.command in UPLOAD_METHODS else None,
                            headers=headers,
                        )
                        resp = conn.getresponse()
                        data = resp.read()
                    except OSError as exc:  # moto gone (its test ended): a gateway error, as a real proxy answers
                        self._reply(502, f"faulty-s3 proxy: upstream unreachable: {exc}".encode())
                        return
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in HOP_BY_HOP:
                            self.send_header(k, v)
                    if self.command == "HEAD":  # no body, but the object's size as moto gave it
                        self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()
                with proxy._lock:
                    proxy.log.append((self.command, self.path, resp.status, False))

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
