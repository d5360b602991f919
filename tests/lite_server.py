"""`milvus-lite server`: the embedded engine as a gRPC server in a process of its own on 127.0.0.1, as a
deployment reaches Milvus. It can be paused (SIGSTOP: connections accepted, nothing answered, as an
unreachable server), killed, and started again on the same port and data."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from service.processes import free_port

START_TIMEOUT = 60.0


class LiteServer:
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
        deadline = time.monotonic() + START_TIMEOUT
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
