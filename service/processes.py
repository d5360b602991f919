"""Start a real process that serves HTTP (ragqa-serve, an LLM server) and wait until it answers.

The one way the tests, `ragqa-eval` and the benchmarks start and stop a server process: a free port
of 127.0.0.1, the process's output in a log file, a readiness poll that fails at once (with the log's
tail) when the process exits, and a stop that sends SIGTERM and kills only a process that hangs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

READY_TIMEOUT = 120.0  # loading the model on a busy two-core machine can take a while


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def service_command(store: str | Path, port: int, log_level: str = "INFO") -> list[str]:
    """`python -m service.cli` for `store` on 127.0.0.1:`port`."""
    command = [sys.executable, "-m", "service.cli", "--store", str(store), "--host", "127.0.0.1"]
    return [*command, "--port", str(port), "--log-level", log_level]


@dataclass
class RunningProcess:
    process: subprocess.Popen[bytes]
    url: str  # http://127.0.0.1:PORT
    log: Path
    ready_seconds: float  # from start to the first good answer of the readiness path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def command(self) -> list[str]:
        """The command line the process was started with."""
        args = self.process.args
        if isinstance(args, str | bytes | os.PathLike):
            return [os.fsdecode(args)]
        return [os.fsdecode(a) for a in args]

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for(self, path: str, status: int = 200, timeout: float = READY_TIMEOUT) -> httpx.Response:
        """Poll `path` until it answers `status`; an error with the log's tail if the process exits or
        the time runs out."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.url}: the process exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                response = httpx.get(f"{self.url}{path}", timeout=5)
                if response.status_code == status:
                    return response
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.url}{path} not {status} after {timeout:.0f} s ({last}):\n{self.log_tail()}"
                )
            time.sleep(0.1)


def start_process(
    command: list[str],
    url: str,
    log: Path,
    ready_path: str = "/readyz",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = READY_TIMEOUT,
) -> RunningProcess:
    """Start `command` (which serves `url`), its output going to `log`; return once `ready_path`
    answers 200. A process that does not get there is killed before the error is raised."""
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=dict(env) if env is not None else None, cwd=cwd
        )
    running = RunningProcess(process, url, log, 0.0)
    try:
        running.wait_for(ready_path, timeout=timeout)
    except BaseException:
        stop_process(running, timeout=5)
        raise
    running.ready_seconds = round(time.perf_counter() - started, 2)
    return running


def stop_process(running: RunningProcess, timeout: float = 20.0) -> bool:
    """SIGTERM and wait; SIGKILL after `timeout`. True when the process ended by itself in time."""
    process = running.process
    if process.poll() is not None:
        return True
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        return False


@contextmanager
def running_process(
    command: list[str],
    url: str,
    log: Path,
    ready_path: str = "/readyz",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = READY_TIMEOUT,
) -> Iterator[RunningProcess]:
    """`start_process`, stopped on exit."""
    running = start_process(command, url, log, ready_path, env, cwd, timeout)
    try:
        yield running
    finally:
        stop_process(running)


@contextmanager
def running_service(
    store: str | Path,
    log: Path | None = None,
    log_level: str = "INFO",
    env: Mapping[str, str] | None = None,
    timeout: float = READY_TIMEOUT,
) -> Iterator[RunningProcess]:
    """The real service over `store` on a free port of 127.0.0.1, ready (an index loaded); stopped on
    exit. Without `log`, its output goes to a temporary file, removed on exit (the errors raised on
    the way carry its tail)."""
    if log is None:
        with (
            tempfile.TemporaryDirectory(prefix="ragqa-service-") as folder,
            running_service(store, Path(folder) / "service.log", log_level, env, timeout) as running,
        ):
            yield running
        return
    port = free_port()
    environment = dict(os.environ if env is None else env)
    url = f"http://127.0.0.1:{port}"
    with running_process(
        service_command(store, port, log_level), url, log, env=environment, timeout=timeout
    ) as running:
        yield running


def index_command(
    paths: Sequence[Path], store: str | Path, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """`ragqa-index PATHS --store STORE --json` in a process of its own (`python -m indexer.cli`), as a
    user or a deployment runs it beside the service; its JSON report. RuntimeError with the end of its
    stderr when it fails."""
    command = [sys.executable, "-m", "indexer.cli", *map(str, paths), "--store", str(store), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=None if env is None else dict(env))
    if done.returncode != 0:
        raise RuntimeError(f"ragqa-index failed (exit {done.returncode}): {done.stderr.strip()[-3000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


LITE_START_TIMEOUT = 60.0


class LiteServer:
    """`milvus-lite server` (pymilvus's embedded engine, the extra `ragqa[milvus]`) as a gRPC server in
    a process of its own on 127.0.0.1, as a deployment reaches Milvus: for the tests and benchmarks of
    the Milvus store. It can be paused (SIGSTOP: connections accepted, nothing answered, as an
    unreachable server), killed, and started again on the same port and data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """For pymilvus.MilvusClient."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def store(self) -> str:
        """The ragqa store setting of its default alias."""
        return f"milvus://127.0.0.1:{self.port}/ragqa"

    def start(self) -> None:
        command = [
            str(Path(sys.executable).parent / "milvus-lite"),
            "server",
            "--data-dir",
            str(self.data_dir),
        ]
        self.process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + LITE_START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(f"milvus-lite server did not listen on {self.port}") from None
                time.sleep(0.1)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGCONT)  # a paused one cannot stop
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def __enter__(self) -> LiteServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
