"""Real storage servers on the loopback for tests: S3 (moto), a fault-injecting proxy, S3 with IAM
auth (wrong credentials), and a GCS emulator.

Why real servers: the filesystem layer's promises (retries on dropped connections and 500s, a clear
error naming the URL for a missing object or a refused key) are about what s3fs/gcsfs/aiohttp/botocore
actually raise on the wire, which a mock of fsspec would not show.

Use from a test module (the names register as pytest fixtures when imported):

    from storage_servers import s3, s3_server, fault_proxy, s3_auth, gcs  # noqa: F401

- `s3` (function): env pointed at a session-wide moto server, `fs.reset()` done, a fresh bucket;
  `s3.url("a/b")`, `s3.upload_tree(local_dir, "prefix")`, `s3.put(key, data)`, `s3.client` (boto3).
- `fault_proxy` (function, uses `s3`): AWS_ENDPOINT_URL pointed at a proxy in front of moto;
  `fault_proxy.inject(kind="500"|"drop"|"reset"|"403", method="GET", count=n, every=k,
  path_contains="...")`, then `.injected` / `.forwarded` counters and `.log` of (method, path, what).
- `s3_auth` (module): a moto server in a subprocess that checks signatures; `.use(monkeypatch,
  good=True|False)` points the env at it with the IAM user's key or a wrong one; `.bucket`.
- `gcs` (function): gcp-storage-emulator in memory, STORAGE_EMULATOR_HOST set; `gcs.url(...)`,
  `gcs.upload_tree(...)`, `gcs.put(...)`.

Retry delays are shortened for tests with MELLAMA_FS_RETRY_DELAY (seconds, fs reads it).
"""
from __future__ import annotations

import http.client
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mellama_jax import fs

ACCESS_KEY, SECRET_KEY, REGION = "testing", "testing", "us-east-1"
_bucket_counter = itertools.count()


def _set_s3_env(monkeypatch, endpoint: str, key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("MELLAMA_FS_RETRY_DELAY", "0.01")
    fs.reset()


def _boto_client(endpoint: str, key: str = ACCESS_KEY, secret: str = SECRET_KEY, service: str = "s3"):
    import boto3
    return boto3.client(service, endpoint_url=endpoint, aws_access_key_id=key,
                        aws_secret_access_key=secret, region_name=REGION)


def _upload_tree(put, local_dir: str, prefix: str) -> None:
    for root, _, files in os.walk(local_dir):
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, local_dir).replace(os.sep, "/")
            with open(path, "rb") as f:
                put(f"{prefix.strip('/')}/{rel}" if prefix.strip("/") else rel, f.read())


# --- S3 (moto) -----------------------------------------------------------------------------------
class S3Server:
    """A moto server in this process, shared by the session."""

    def __init__(self):
        from moto.server import ThreadedMotoServer
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.host, self.port = host, port
        self.endpoint = f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.stop()


@dataclass
class S3Bucket:
    """One fresh bucket on a server; URLs and uploads for a test."""
    endpoint: str
    bucket: str
    client: object

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}" if key else f"s3://{self.bucket}"

    def put(self, key: str, data: bytes | str) -> str:
        self.client.put_object(Bucket=self.bucket, Key=key.lstrip("/"),
                               Body=data.encode() if isinstance(data, str) else data)
        return self.url(key)

    def upload_tree(self, local_dir: str, prefix: str = "") -> str:
        """Every file under local_dir as s3://bucket/prefix/<relative path>; returns the prefix URL."""
        _upload_tree(self.put, local_dir, prefix)
        return self.url(prefix.strip("/"))


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server()
    yield server
    server.stop()


def new_bucket(endpoint: str) -> S3Bucket:
    client = _boto_client(endpoint)
    name = f"t{os.getpid()}-{next(_bucket_counter)}-{uuid.uuid4().hex[:6]}"
    client.create_bucket(Bucket=name)
    return S3Bucket(endpoint=endpoint, bucket=name, client=client)


@pytest.fixture
def s3(s3_server, monkeypatch):
    _set_s3_env(monkeypatch, s3_server.endpoint)
    yield new_bucket(s3_server.endpoint)
    fs.reset()


# --- the fault-injecting proxy -------------------------------------------------------------------
_INTERNAL_ERROR = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
                   b"<Message>We encountered an internal error. Please try again.</Message>"
                   b"<RequestId>INJECTED</RequestId></Error>")
_INVALID_KEY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidAccessKeyId</Code>'
                b"<Message>The AWS Access Key Id you provided does not exist in our records.</Message>"
                b"<RequestId>INJECTED</RequestId></Error>")
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


@dataclass
class Fault:
    """Inject `kind` into requests matching method/path_contains: every `every`-th match, at most
    `count` times (None = unlimited)."""
    kind: str
    method: str | None = "GET"
    count: int | None = 1
    every: int = 1
    path_contains: str | None = None
    matched: int = 0
    fired: int = 0

    def take(self, method: str, path: str) -> bool:
        if self.method and method.upper() != self.method.upper():
            return False
        if self.path_contains and self.path_contains not in path:
            return False
        if self.count is not None and self.fired >= self.count:
            return False
        self.matched += 1
        if (self.matched - 1) % max(1, self.every):
            return False
        self.fired += 1
        return True


class FaultProxy:
    """A threaded HTTP/1.1 forwarder on the loopback in front of an upstream server, which answers
    some requests with a fault instead: "500" (S3 InternalError XML), "drop" (headers and part of the
    body, then close), "reset" (close without answering), "403" (S3 InvalidAccessKeyId XML)."""

    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self.faults: list[Fault] = []
        self.injected = 0
        self.forwarded = 0
        self.log: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        line = self.rfile.readline().strip()
                        n = int(line.split(b";")[0], 16)
                        if n == 0:
                            while self.rfile.readline().strip():
                                pass
                            return bytes(out)
                        out += self.rfile.read(n)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self):
                body = self._body()
                fault = proxy._pick(self.command, self.path)
                if fault is not None:
                    return self._inject(fault)
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                with proxy._lock:
                    proxy.forwarded += 1
                    proxy.log.append((self.command, self.path, str(resp.status)))
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                if self.command == "HEAD":
                    self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _inject(self, fault: Fault):
                kind = fault.kind
                if kind == "reset":
                    self.close_connection = True
                    try:  # SO_LINGER 0: the peer sees a reset, not a clean close
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    except OSError:
                        pass
                    return
                if kind in ("500", "403"):
                    status, payload = (500, _INTERNAL_ERROR) if kind == "500" else (403, _INVALID_KEY)
                    self.send_response_only(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                if kind == "drop":
                    # Ask upstream for the real answer, send its headers and half of its body, close.
                    conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    conn.request(self.command, self.path, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    conn.close()
                    self.send_response_only(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP and k.lower() != "content-length":
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                raise ValueError(f"unknown fault kind {kind!r}")

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def inject(self, kind: str = "500", method: str | None = "GET", count: int | None = 1, every: int = 1,
               path_contains: str | None = None) -> Fault:
        if kind not in ("500", "drop", "reset", "403"):
            raise ValueError(f"unknown fault kind {kind!r}")
        fault = Fault(kind=kind, method=method, count=count, every=every, path_contains=path_contains)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def _pick(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.take(method, path):
                    self.injected += 1
                    self.log.append((method, path, f"injected {fault.kind}"))
                    return fault
        return None

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def fault_proxy(s3, s3_server, monkeypatch):
    proxy = FaultProxy(s3_server.host, s3_server.port)
    _set_s3_env(monkeypatch, proxy.endpoint)
    yield proxy
    proxy.stop()
    fs.reset()


# --- S3 with IAM auth (wrong credentials) ----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(host: str, port: int, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on {host}:{port} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {host}:{port} did not start in {timeout:.0f} s")


@dataclass
class AuthS3:
    """A moto server (own process) that checks request signatures against its IAM users."""
    endpoint: str
    key: str
    secret: str
    bucket: str
    proc: subprocess.Popen = field(repr=False)

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}" if key else f"s3://{self.bucket}"

    def use(self, monkeypatch, good: bool = True) -> None:
        if good:
            _set_s3_env(monkeypatch, self.endpoint, self.key, self.secret)
        else:
            _set_s3_env(monkeypatch, self.endpoint, "AKIAWRONGWRONGWRONG1", "wrong-secret")


@pytest.fixture(scope="module")
def s3_auth():
    port = _free_port()
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http("127.0.0.1", port, proc)
        endpoint = f"http://127.0.0.1:{port}"
        # While auth is still off: an IAM user with a key and full access, a bucket and one object.
        iam = _boto_client(endpoint, service="iam")
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="all", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'))
        made = iam.create_access_key(UserName="reader")["AccessKey"]
        bucket = "auth-bucket"
        s3c = _boto_client(endpoint)
        s3c.create_bucket(Bucket=bucket)
        s3c.put_object(Bucket=bucket, Key="data/a.txt", Body=b"alpha\nbeta\n")
        import requests  # moto's own dependency; urllib's form content type hides the body from it
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        yield AuthS3(endpoint=endpoint, key=made["AccessKeyId"], secret=made["SecretAccessKey"],
                     bucket=bucket, proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        fs.reset()


# --- GCS emulator ----------------------------------------------------------------------------------
@dataclass
class GCSBucket:
    endpoint: str
    bucket: str

    def url(self, key: str = "") -> str:
        return f"gs://{self.bucket}/{key.lstrip('/')}" if key else f"gs://{self.bucket}"

    def put(self, key: str, data: bytes | str) -> str:
        url = self.url(key)
        fs.write_bytes(url, data.encode() if isinstance(data, str) else data)
        return url

    def upload_tree(self, local_dir: str, prefix: str = "") -> str:
        _upload_tree(self.put, local_dir, prefix)
        return self.url(prefix.strip("/"))


class GCSServer:
    def __init__(self):
        from gcp_storage_emulator.server import create_server
        self.port = _free_port()
        self._server = create_server("127.0.0.1", self.port, in_memory=True)
        self._server.start()
        _wait_http("127.0.0.1", self.port)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(scope="session")
def gcs_server():
    server = GCSServer()
    yield server
    server.stop()


@pytest.fixture
def gcs(gcs_server, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)
    monkeypatch.setenv("MELLAMA_FS_RETRY_DELAY", "0.01")
    fs.reset()
    name = f"g{os.getpid()}-{next(_bucket_counter)}-{uuid.uuid4().hex[:6]}"
    gfs = fs._filesystem("gs://" + name)
    gfs.mkdir(name)
    yield GCSBucket(endpoint=gcs_server.endpoint, bucket=name)
    fs.reset()
