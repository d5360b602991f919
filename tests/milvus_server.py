"""The real Milvus standalone server (PyPI `milvus==2.3.5`) as a process on 127.0.0.1, for the tests.

Why: milvus-lite (what most Milvus tests use) is another engine behind the same client API; where a
test must hold for the genuine server (consistency levels, asynchronous index build and load, the
alias rules), it needs one, and there is no Docker here. The wheel `milvus==2.3.5` ships the real
`milvus run standalone` binary (embedded etcd, rocksmq), lzma-compressed.

How:
- the binary and its libraries are unpacked once (the package's own `_initialize_data_files`, under a
  file lock) into ~/.cache/ragqa/milvus-2.3.5 (or $XDG_CACHE_HOME), shared by every run;
- the package's config template (`milvus.MilvusServerConfig`) writes <data_dir>/configs/milvus.yaml:
  free ports, data and logs under data_dir, every component's `ip` 127.0.0.1 (else it advertises the
  machine's first external address), a short graceful stop; and an etcd config file puts the
  embedded etcd on 127.0.0.1 and free ports (it takes 2379/2380 otherwise, so two runs collide);
- Milvus 2.3.5 binds its gRPC servers and its management HTTP server to the wildcard address
  whatever `ip` says (`ip` is only what it advertises). So where the machine allows it, the server
  runs in a network namespace of its own (`unshare --net`), which has nothing but loopback, and a
  relay in that namespace (this module run as `python -m tests.milvus_server`) accepts connections
  on a listening socket of 127.0.0.1 made here, in the machine's namespace, and passed to it, and
  forwards them to the server's proxy. Nothing of the server listens on the machine's addresses
  then. Without namespaces (no `unshare`, no permission) it runs in the machine's namespace, with
  a warning;
- readiness is `MilvusClient(uri).list_collections()` answering; the stop sends SIGTERM to the
  process group, SIGKILL after STOP_GRACE seconds, and waits until no process of the group is left
  (the relay also stops the server if the tests' process dies without doing so).

Measured here: ready 2.4 s after the start (6.7 s when it unpacks first), ~215 MB RSS idle (and the
relay's 30 MB), stopped in 2.2 s. Started again on the same data_dir it takes ~56 s: the previous
run's sessions stay in etcd until their 30 s leases expire. No BM25, sparse vectors, TEXT_MATCH or
hybrid_search in 2.3.5 (2.4/2.5), and its JSON fields take objects only.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import importlib.util
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from filelock import FileLock

from service.processes import free_port

VERSION = "2.3.5"  # of the PyPI package `milvus`
READY_TIMEOUT = 90.0  # seconds from the start until list_collections answers (see above)
# common.gracefulStopTimeout in milvus.yaml, seconds (1800 in the template). Its stop waits that long for
# the query node to hand its segments over (to no one, in standalone), then ends cleanly in ~0.1 s.
GRACEFUL_STOP = 2
STOP_GRACE = GRACEFUL_STOP + 5.0  # seconds between SIGTERM and SIGKILL
KILL_WAIT = 10.0  # seconds for the processes to be gone after SIGKILL
LOG_NAME = "server.log"  # in <data_dir>/logs, next to Milvus's own log files
REPOSITORY = Path(__file__).resolve().parents[1]

# The components of `milvus run standalone` that have an `ip` in milvus.yaml (Milvus 2.3).
COMPONENTS = ["rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode"]

# ioctl requests and the flag that bring a network interface up (linux/sockios.h, linux/if.h).
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sh22x"  # struct ifreq: the interface's name, its flags, the rest of the union


def standalone_unavailable() -> str | None:
    """Why the standalone server cannot run here (for pytest.skip), or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"the Milvus {VERSION} standalone binary is for Linux only (this is {sys.platform})"
    if importlib.util.find_spec("pymilvus") is None:
        return "pymilvus is not installed (the extra ragqa[milvus])"
    if importlib.util.find_spec("milvus") is None:
        return f"the PyPI package milvus=={VERSION} (the Milvus standalone server) is not installed"
    import milvus

    if getattr(milvus, "__version__", None) != VERSION:
        return f"the package milvus is {getattr(milvus, '__version__', '?')}, not {VERSION}"
    if not (Path(milvus.__file__).parent / "data" / "bin" / "milvus.lzma").is_file():
        return f"the package milvus=={VERSION} has no server binary (milvus/data/bin/milvus.lzma)"
    return None


@contextmanager
def standalone_server(data_dir: Path, isolate: bool | None = None) -> Iterator[str]:
    """Run `milvus run standalone` with its data, config and logs under `data_dir` (created if
    missing) and yield a URI like "http://127.0.0.1:PORT" for pymilvus.MilvusClient(uri=...).

    `isolate`: run it in a network namespace of its own (see the module's docstring); None does so
    where the machine allows it and warns where it does not, True requires it. The server is stopped
    and every process of it gone when the block ends; a server that does not answer within
    READY_TIMEOUT is stopped and raises TimeoutError with its log's tail."""
    reason = standalone_unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    namespace = _namespace_command() if isolate is not False else None
    if namespace is None and isolate:
        raise RuntimeError("no network namespace for the Milvus server here (`unshare --net` fails)")
    if namespace is None and isolate is None:
        warnings.warn(
            "no network namespace here: the Milvus server's gRPC ports listen on every address",
            RuntimeWarning,
            stacklevel=3,
        )
    data_dir = data_dir.resolve()
    binaries = _binary_dir()
    # Only the server loads the libraries it comes with (libstdc++, libz, ...), not the relay's Python.
    library_path = os.pathsep.join(filter(None, [str(binaries), os.environ.get("LD_LIBRARY_PATH")]))
    server_command = ["env", f"LD_LIBRARY_PATH={library_path}", str(binaries / "milvus"), "run", "standalone"]
    proxy_port, management_port = _write_config(data_dir)
    log = data_dir / "logs" / LOG_NAME
    environment = _environment(data_dir, management_port)
    listener: socket.socket | None = None
    pass_fds: tuple[int, ...] = ()
    if namespace is None:
        command, port = server_command, proxy_port
    else:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port, pass_fds = listener.getsockname()[1], (listener.fileno(),)
        relay = [sys.executable, "-m", "tests.milvus_server", "--listen-fd", str(listener.fileno())]
        command = [*namespace, *relay, "--target-port", str(proxy_port), "--", *server_command]
        python_path = [str(REPOSITORY), *filter(None, [os.environ.get("PYTHONPATH")])]
        environment["PYTHONPATH"] = os.pathsep.join(python_path)
    uri = f"http://127.0.0.1:{port}"
    try:
        with log.open("ab") as out:
            process = subprocess.Popen(
                command,
                cwd=data_dir,  # glog.conf's log_dir is relative: logs/
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=pass_fds,
                start_new_session=True,  # its own process group, which the stop signals as a whole
            )
    finally:
        if listener is not None:
            listener.close()  # the relay has its own copy
    try:
        _wait_ready(uri, process, log)
        yield uri
    finally:
        _stop(process)


def _binary_dir() -> Path:
    """The unpacked binary and libraries, shared by every run (unpacked once, ~4 s, 250 MB)."""
    import milvus

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ragqa" / f"milvus-{VERSION}"
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(cache / "unpack.lock"):
        # Skips each file whose lzma's md5 it already noted (after writing the file).
        milvus._initialize_data_files(str(cache))
    return cache / "bin"


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _write_config(data_dir: Path) -> tuple[int, int]:
    """Write <data_dir>/configs/milvus.yaml and etcd.yaml; return the proxy's port (the clients') and
    the management port (/healthz, /metrics)."""
    import milvus

    config = milvus.MilvusServerConfig(data_dir=str(data_dir))
    port_keys = [key for key in config.configurable_items if key.endswith("_port")]  # etcd_port, ...
    *ports, etcd_peer_port, management_port = _free_ports(len(port_keys) + 2)
    config.update(**dict(zip(port_keys, ports, strict=True)))
    etcd_port = config.configs["etcd_port"]
    for component in COMPONENTS:
        config.set(f"{component}.ip", "127.0.0.1")
    config.set("etcd.endpoints", f"127.0.0.1:{etcd_port}")
    config.set("common.gracefulStopTimeout", GRACEFUL_STOP)
    config.resolve()  # writes configs/milvus.yaml; makes configs/, logs/ and data/

    etcd_config = data_dir / "configs" / "etcd.yaml"
    etcd_config.write_text(
        "name: milvus\n"
        f"listen-client-urls: http://127.0.0.1:{etcd_port}\n"
        f"advertise-client-urls: http://127.0.0.1:{etcd_port}\n"
        f"listen-peer-urls: http://127.0.0.1:{etcd_peer_port}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{etcd_peer_port}\n"
        f"initial-cluster: milvus=http://127.0.0.1:{etcd_peer_port}\n",
        encoding="utf-8",
    )
    # The template has no etcd.config.path (which the embedded etcd reads): add it under `etcd:`.
    milvus_yaml = data_dir / "configs" / "milvus.yaml"
    text = milvus_yaml.read_text(encoding="utf-8")
    if text.count("\netcd:\n") != 1:
        raise RuntimeError(f"{milvus_yaml}: no single `etcd:` section to add etcd.config.path to")
    text = text.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd_config}\n")
    milvus_yaml.write_text(text, encoding="utf-8")
    return int(config.configs["proxy_port"]), management_port


def _environment(data_dir: Path, management_port: int) -> dict[str, str]:
    """What `milvus.MilvusServer.start` sets (but LD_LIBRARY_PATH), and where the config is."""
    return {
        **os.environ,
        "DEPLOY_MODE": "STANDALONE",
        "METRICS_PORT": str(management_port),
        "MILVUS_RUN_DIR": str(data_dir / "run"),  # its pid file (a lock): one per data directory
        "MILVUSCONF": str(data_dir / "configs"),
    }


@functools.cache
def _namespace_command() -> list[str] | None:
    """The `unshare` command that runs a program in a new network namespace, if one works here."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    command = [unshare, "--net"] if os.geteuid() == 0 else [unshare, "--net", "--map-root-user"]
    try:
        probe = subprocess.run([*command, "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return command if probe.returncode == 0 else None


def _log_tail(log: Path, lines: int = 40) -> str:
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_ready(uri: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll list_collections until it answers; raise with the log's tail if the process exits or
    READY_TIMEOUT passes."""
    from pymilvus import MilvusClient

    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer yet"
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"Milvus {VERSION} exited with code {process.returncode} before it answered:\n"
                f"{_log_tail(log)}"
            )
        try:
            client = MilvusClient(uri=uri, timeout=5, dedicated=True)
            try:
                client.list_collections(timeout=5)
                return
            finally:
                client.close()
        except Exception as exc:  # pymilvus raises MilvusException and others while it starts
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Milvus {VERSION} at {uri} did not answer within {READY_TIMEOUT:.0f} s ({last}):\n"
                f"{_log_tail(log)}"
            )
        time.sleep(0.5)


def _group_members(group: int) -> list[int]:
    """The processes of a process group that still run (zombies, which hold nothing, excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        state, _parent, process_group = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(process_group) == group and state != "Z":
            members.append(int(entry.name))
    return members


def _wait_gone(process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        process.poll()  # reaps the group's leader once it exits
        if process.returncode is not None and not _group_members(process.pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, SIGKILL after STOP_GRACE; return when none of it runs."""
    group = process.pid  # start_new_session: the leader's pid is the group's id
    with suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    if _wait_gone(process, STOP_GRACE):
        return
    with suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    if not _wait_gone(process, KILL_WAIT):
        raise RuntimeError(
            f"Milvus {VERSION}: processes {_group_members(group)} still run {KILL_WAIT:.0f} s after SIGKILL"
        )


# The relay, run in the server's network namespace: `python -m tests.milvus_server --listen-fd N
# --target-port P -- milvus run standalone`.


def _loopback_up() -> None:
    """Bring up `lo`, which a new network namespace has down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack(IFREQ, fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack(IFREQ, b"lo", 0)))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Copy `source` to `target` until `source` ends, then end `target`'s sending side."""
    with suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with suppress(OSError):
        target.shutdown(socket.SHUT_WR)


def _forward(client: socket.socket, target_port: int) -> None:
    """Relay one connection to 127.0.0.1:`target_port` of this namespace, both ways."""
    with client:
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port), timeout=5)
        except OSError:  # not listening yet: the client sees the connection closed and tries again
            return
        with upstream:
            upstream.settimeout(None)
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join()


def _relay(listen_fd: int, target_port: int, command: list[str]) -> int:
    """Start `command` and relay the connections of the inherited listener to `target_port` until it
    exits; return its exit code."""
    _loopback_up()
    listener = socket.socket(fileno=listen_fd)
    listener.settimeout(0.5)
    server = subprocess.Popen(command)
    # SIGTERM (sent to the whole group) is for the server: wait for it to end and reap it. A handler,
    # not SIG_IGN, which the server would have inherited.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    parent = os.getppid()
    while server.poll() is None:
        if os.getppid() != parent:  # the tests' process died without stopping the server: stop it
            server.terminate()
            try:
                server.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            break
        try:
            client, _ = listener.accept()
        except TimeoutError:
            continue
        threading.Thread(target=_forward, args=(client, target_port), daemon=True).start()
    return server.returncode if server.returncode >= 0 else 128 - server.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Relay a listener passed in to a server it starts.")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    return _relay(args.listen_fd, args.target_port, args.command)


if __name__ == "__main__":
    sys.exit(main())
