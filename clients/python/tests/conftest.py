"""Fixtures starting real `fastworker control-plane` processes on free ports.

This mirrors tests/src/lib.rs: a random base port whose six ports bind now,
the example plugin built from this workspace, readiness when a status query
is answered, and up to five attempts when a port was taken meanwhile.

The binary and the plugin come from FASTWORKER_BIN and FASTWORKER_PLUGIN,
by default the workspace's target/debug, built by
`cargo build -p fastworker -p example-tasks` (scripts/test does it).
"""

import os
import random
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import fastworker

ROOT = Path(__file__).resolve().parents[3]
TARGET = ROOT / "target" / "debug"
BIN = Path(os.environ.get("FASTWORKER_BIN", TARGET / "fastworker"))
PLUGIN = Path(os.environ.get("FASTWORKER_PLUGIN", TARGET / "libexample_tasks.so"))


def free_ports(count):
    """The first of `count` consecutive ports of 127.0.0.1 that bind now."""
    rng = random.Random(os.getpid() ^ time.time_ns())
    while True:
        base = rng.randrange(20_000, 60_000 - count)
        sockets = []
        try:
            for offset in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()


class ControlPlane:
    """A `fastworker control-plane` child process, killed by `stop`; with
    `gui`, its dashboard and HTTP API serve at `self.gui` (an http:// URL)."""

    def __init__(self, extra=(), plugins=True, key=None, gui=False):
        for _attempt in range(5):
            self.address = f"tcp://127.0.0.1:{free_ports(6)}"
            args = [str(BIN), "control-plane", "--base-address", self.address]
            if gui:
                gui_port = free_ports(1)
                self.gui = f"http://127.0.0.1:{gui_port}"
                args += ["--gui-host", "127.0.0.1", "--gui-port", str(gui_port)]
            else:
                args.append("--no-gui")
            if plugins:
                args += ["--task-modules", str(PLUGIN)]
            args += list(extra)
            self.log_file = tempfile.NamedTemporaryFile(prefix="fastworker-pytest-", suffix=".log", delete=False)
            # No restart window unless a test asks for one (--restart-window wins).
            env = dict(os.environ, FASTWORKER_LOG="info", FASTWORKER_RESTART_WINDOW="0")
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=self.log_file, env=env)
            self.key = key
            ready = self._wait_ready(20.0)
            extra = list(extra)
            pairs = list(zip(extra, extra[1:]))
            isolated = plugins and "--in-process" not in extra and ("--concurrency", "0") not in pairs
            if ready is None and isolated:
                ready = self._wait_worker_processes(30.0)
            if ready is None:
                return
            self.stop()
            if "already in use" not in ready:
                pytest.fail(f"control plane did not start:\n{ready}")
        pytest.fail("no free base port found in 5 attempts")

    def _wait_ready(self, limit):
        """None once a status query is answered, else the log."""
        deadline = time.monotonic() + limit
        # Dial only once the result port listens, as tests/src/lib.rs does:
        # NNG 1.4 can crash a process that closes a socket whose dialer is
        # between two failed connection attempts.
        result_port = int(self.address.rsplit(":", 1)[1]) + 4
        while True:
            if self.process.poll() is not None:
                return f"exited with {self.process.returncode}:\n{self.log()}"
            try:
                socket.create_connection(("127.0.0.1", result_port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() >= deadline:
                    return f"nothing listening on port {result_port} after {limit} s:\n{self.log()}"
                time.sleep(0.02)
        probe = fastworker.Client(self.address, key=self.key, timeout=0.3)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return f"exited with {self.process.returncode}:\n{self.log()}"
            try:
                probe.status(str(uuid.uuid4()))
            except fastworker.UnknownTaskId:
                return None
            except fastworker.FastworkerError:
                time.sleep(0.05)
        return f"not answering after {limit} s:\n{self.log()}"

    def _wait_worker_processes(self, limit):
        """None once the control plane's worker processes (docs/isolation.md)
        are all listed active, as tests/src/lib.rs waits for them, else the log."""
        deadline = time.monotonic() + limit
        probe = fastworker.Client(self.address, key=self.key, timeout=1.0)
        while time.monotonic() < deadline:
            line = next((l for l in self.log().splitlines() if "worker processes of" in l), None)
            if line is not None:
                expected = int(line.split("tasks run in ", 1)[1].split(" ", 1)[0])
                subworkers = probe.workers()["subworkers"]
                active = [w for w in subworkers if w["worker_id"].startswith("local-") and w["status"] == "Active"]
                if len(active) >= expected:
                    return None
            time.sleep(0.05)
        return f"worker processes not all active after {limit} s:\n{self.log()}"

    def client(self, **options):
        """A client of this control plane (with its key, if it has one)."""
        options.setdefault("key", self.key)
        options.setdefault("timeout", 10.0)
        return fastworker.Client(self.address, **options)

    def log(self):
        return Path(self.log_file.name).read_text(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log_file.close()
        Path(self.log_file.name).unlink(missing_ok=True)


@pytest.fixture(scope="session", autouse=True)
def built():
    """Fails early, saying how to build, when the binary or plugin is missing."""
    for path in (BIN, PLUGIN):
        if not path.is_file():
            pytest.fail(f"{path} is missing: run `cargo build -p fastworker -p example-tasks` (or set "
                        "FASTWORKER_BIN / FASTWORKER_PLUGIN)")


@pytest.fixture(scope="module")
def control_plane():
    """One control plane with the example tasks, shared by a module's tests."""
    cp = ControlPlane()
    yield cp
    cp.stop()


@pytest.fixture
def start_control_plane():
    """Starts control planes with extra flags; all stopped after the test."""
    started = []

    def start(*extra, **options):
        cp = ControlPlane(extra, **options)
        started.append(cp)
        return cp

    yield start
    for cp in started:
        cp.stop()


@pytest.fixture
def client(control_plane):
    return control_plane.client()


def keygen(directory, name, role=None, source=None, worker_id=None):
    """A key file made by `fastworker keygen` (a worker key names its subworker)."""
    out = Path(directory) / name
    args = [str(BIN), "keygen", "--out", str(out)]
    if role:
        args += ["--role", role, "--from", str(source)]
    if worker_id:
        args += ["--worker-id", worker_id]
    subprocess.run(args, check=True, capture_output=True)
    return out
