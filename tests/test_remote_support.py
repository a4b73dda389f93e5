"""Shared pieces of the remote tests: a real S3 server on 127.0.0.1 and a TCP proxy.

`s3` (fixture, one server per test module) starts moto's S3-compatible
server on a free port with dummy credentials, points `S3_ENDPOINT` (read by
TensorBoard and by `training_health.io.remote`) at it and gives each test its
own bucket. `Proxy` sits between a client and that server and can refuse
connections, stall them, or forward a request and drop the answer (an
upload that lands although the client sees a failure).

Other test modules import these names; this module holds no tests.
"""

import contextlib
import os
import select
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
CLEARED_AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_CONFIG_FILE")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, interval=0.1, what="condition"):
    """Polls `predicate` until it returns a true value; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


class S3Server:
    """moto's S3 server on 127.0.0.1; `stop()`/`start()` simulate an outage."""

    def __init__(self, port=None):
        from moto.server import ThreadedMotoServer

        self._cls = ThreadedMotoServer
        self.port = port or free_port()
        self.endpoint = "http://127.0.0.1:%d" % self.port
        self._server = None

    def start(self):
        self._server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        wait_until(self._accepts, 10, what="the S3 server to listen")

    def _accepts(self):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True
        return False

    def stop(self):
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def new_bucket(self):
        name = "th-" + uuid.uuid4().hex[:12]
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket, prefix=""):
        response = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for item in response.get("Contents", []))

    def get(self, bucket, key):
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def download(self, bucket, prefix, dest):
        """Copies every object under `prefix` to local directory `dest` (same relative names)."""
        for key in self.keys(bucket, prefix):
            path = os.path.join(dest, os.path.relpath(key, prefix))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(self.get(bucket, key))
        return dest


@pytest.fixture(scope="module")
def s3_server():
    """One real S3-compatible server for the module, with the environment pointing at it."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    server = S3Server()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in DUMMY_AWS_ENV.items():
            mp.setenv(key, value)
        for key in CLEARED_AWS_ENV:
            mp.delenv(key, raising=False)
        mp.setenv("S3_ENDPOINT", server.endpoint)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def s3(s3_server):
    """(server, bucket): the module's server and a fresh bucket for this test."""
    if s3_server._server is None:  # a previous test left it stopped
        s3_server.start()
    return s3_server, s3_server.new_bucket()


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of `port`, with failure modes.

    Modes: "pass" (forward both ways), "refuse" (close new connections at
    once), "stall" (accept, read, never answer), "drop_response" (forward the
    request upstream but close the client's connection instead of answering,
    so the request takes effect while the client sees a failure).
    """

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.dropped = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.endpoint = "http://127.0.0.1:%d" % self.port
        self._stop = threading.Event()
        self._threads = []
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)
        self._accept_thread.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set() or self._sock.fileno() < 0:
                    return  # closed
                # Out of file descriptors, say (a full test session holds
                # many, and stalled connections hold theirs for a minute):
                # the proxy must not stop accepting for good.
                time.sleep(0.1)
                continue
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, client):
        with client:
            if self.mode == "refuse":
                return
            if self.mode == "stall":  # read and never answer: no upstream connection to hold
                deadline = time.monotonic() + 60
                while not self._stop.is_set() and time.monotonic() < deadline:
                    if self.mode != "stall":
                        return  # the client gave up long ago; it reconnects for its retry
                    readable, _, _ = select.select([client], [], [], 0.2)
                    if readable and not client.recv(65536):
                        return
                return
            with socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5) as upstream:
                self._pump(client, upstream)

    def _pump(self, client, upstream):
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([client, upstream], [], [], 0.2)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                if sock is client:
                    if self.mode == "stall":
                        continue
                    upstream.sendall(data)
                elif self.mode == "drop_response":
                    # An interim "100 Continue" is passed on so that the client
                    # sends the body; the final answer is dropped.
                    interim = b""
                    if data.startswith(b"HTTP/1.1 100") and b"\r\n\r\n" in data:
                        end = data.index(b"\r\n\r\n") + 4
                        interim, data = data[:end], data[end:]
                    if interim:
                        client.sendall(interim)
                    if data:
                        self.dropped += 1
                        return  # the upload happened upstream; the client gets no answer
                else:
                    client.sendall(data)

    def close(self):
        self._stop.set()
        self._sock.close()
        self._accept_thread.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def proxy(s3_server):
    p = Proxy(s3_server.port)
    yield p
    p.close()


def fast_fail_options(endpoint, read_timeout=1.0):
    """fsspec storage options for an S3 endpoint that fail within a few seconds."""
    return {
        "client_kwargs": {"endpoint_url": endpoint},
        "config_kwargs": {
            "connect_timeout": 1,
            "read_timeout": read_timeout,
            "retries": {"max_attempts": 1},
        },
    }


def no_tensorflow_dir(tmp_path):
    """A directory that, first on PYTHONPATH, makes `import tensorflow` fail.

    It stands for a machine where TensorFlow is not installed.
    """
    shadow = tmp_path / "no_tensorflow" / "tensorflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'tensorflow'\", name='tensorflow')\n"
    )
    return str(shadow.parent)


def start_tensorboard(args, env, log_path, timeout=60):
    """Starts a process serving TensorBoard on a free 127.0.0.1 port; returns (proc, base_url)."""
    import urllib.request

    port = free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        list(args) + ["--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = "http://127.0.0.1:%d" % port

    def up():
        if proc.poll() is not None:
            log.flush()
            pytest.fail("tensorboard exited early:\n" + open(log_path, errors="replace").read()[-3000:])
        with contextlib.suppress(OSError), urllib.request.urlopen(base + "/data/runs", timeout=2):
            return True
        return False

    wait_until(up, timeout, interval=0.25, what="tensorboard to answer")
    return proc, base


def stop_process(proc, timeout=10):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


PYTHON = sys.executable
