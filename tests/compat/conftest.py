"""Fixtures for the hvac compatibility suite.

Every test talks to the real `bunker` binary, started as a separate process on a free
loopback port with its own temporary directory and an HCL config using embedded storage.
Readiness is found by polling GET /v1/sys/health against a deadline, never by sleeping a
fixed time. The binary is taken from $BUNKER_BIN, or target/debug/bunker under the repo root.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_DEADLINE_SECS = 30.0
STOP_DEADLINE_SECS = 10.0
KEY_SHARES = 5
KEY_THRESHOLD = 3


def bunker_bin() -> Path:
    path = Path(os.environ.get("BUNKER_BIN", REPO_ROOT / "target" / "debug" / "bunker"))
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.is_file():
        pytest.exit(
            f"bunker binary not found at {path}: run `cargo build -p bunker` or set BUNKER_BIN",
            returncode=2,
        )
    return path


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerDied(RuntimeError):
    pass


@dataclass
class BunkerServer:
    """One `bunker server -config FILE` process with embedded storage in `workdir`."""

    workdir: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    keys: list[str] = field(default_factory=list)
    keys_base64: list[str] = field(default_factory=list)
    root_token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def config_text(self) -> str:
        data_dir = self.workdir / "data"
        return (
            f'storage "embedded" {{\n  path = "{data_dir}"\n}}\n\n'
            f'listener "tcp" {{\n'
            f'  address     = "127.0.0.1:{self.port}"\n'
            f"  tls_disable = true\n"
            f"}}\n\n"
            f'api_addr  = "{self.url}"\n'
            f'log_level = "info"\n'
        )

    def start(self) -> None:
        """Start the process and wait until it answers /v1/sys/health.

        A port picked by binding to port 0 can be taken by someone else before the server
        binds it; if the process dies during start-up, try again with a new port.
        """
        last_error: Exception | None = None
        for _attempt in range(3):
            if not self.port or last_error is not None:
                self.port = free_loopback_port()
            config = self.workdir / "bunker.hcl"
            config.write_text(self.config_text())
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [str(bunker_bin()), "server", f"-config={config}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, "NO_COLOR": "1"},
            )
            log.close()
            try:
                self.wait_ready()
                return
            except ServerDied as e:
                last_error = e
        raise RuntimeError(f"bunker did not start: {last_error}\n{self.log_tail()}")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_DEADLINE_SECS
        delay = 0.02
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ServerDied(f"exited with status {self.proc.returncode}")
            try:
                # Any HTTP answer means the listener is up: 501 uninitialised, 503 sealed, 200.
                requests.get(f"{self.url}/v1/sys/health", timeout=2)
                return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"bunker not ready after {READY_DEADLINE_SECS}s\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_DEADLINE_SECS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_DEADLINE_SECS)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.url, token=token, timeout=10)

    def initialize_and_unseal(self) -> None:
        c = self.client()
        result = c.sys.initialize(KEY_SHARES, KEY_THRESHOLD)
        self.keys = result["keys"]
        self.keys_base64 = result["keys_base64"]
        self.root_token = result["root_token"]
        self.unseal()

    def unseal(self) -> None:
        c = self.client()
        c.sys.submit_unseal_keys(self.keys[:KEY_THRESHOLD])
        assert not c.sys.is_sealed(), "server still sealed after threshold keys"


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory):
    """Starts fresh servers (uninitialised) and stops them all at the end of the session."""
    started: list[BunkerServer] = []

    def start(name: str = "bunker") -> BunkerServer:
        server = BunkerServer(workdir=tmp_path_factory.mktemp(name))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def bunker(server_factory) -> BunkerServer:
    """The shared server: initialised with 5 shares / threshold 3, unsealed, and with a
    KV version 2 engine at secret/ (enabled the way a user would with hvac)."""
    server = server_factory("shared")
    server.initialize_and_unseal()
    root = server.client(server.root_token)
    root.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    return server


@pytest.fixture
def root_client(bunker) -> hvac.Client:
    return bunker.client(bunker.root_token)


@pytest.fixture
def unique() -> str:
    """A name no other test uses, so tests on the shared server do not interfere."""
    return "t-" + uuid.uuid4().hex[:12]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of each server log to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for name in ("bunker", "lifecycle_server"):
            server = item.funcargs.get(name)
            if isinstance(server, BunkerServer):
                report.sections.append((f"{name} log tail", server.log_tail()))
