"""What `gateway dev` checks before it touches anything: one instance per folder, free ports.

A second `gateway dev` in the same folder would start a second redis-server on the same
`.data/redis` (same AOF and RDB). The first one holds an exclusive flock on `.data/dev.lock`
for as long as it runs, with its pid and ports written in the file. Its redis-server inherits
the descriptor, so the lock lasts until both have exited. The kernel releases it when they
die, however they die, so a stale file never blocks.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

PORT_HELP = "choose other ports with --port N (gateway N, admin API N+1, upstream N+2, ops N+10, admin ops N+11)"


def dev_ports(base_port: int) -> dict[str, int]:
    """The listeners of `gateway dev --port base_port`, by name."""
    return {"gateway": base_port, "admin API": base_port + 1, "upstream": base_port + 2,
            "sign-in provider": base_port + 3, "ops": base_port + 10,
            "admin ops": base_port + 11}


def describe(info: dict) -> str:
    """The holder as `pid 12 (gateway :8080, admin API :8081, ...)`, from what it wrote."""
    ports = ", ".join(f"{name} :{port}" for name, port in info.items() if name != "pid")
    return f"pid {info.get('pid', '?')}" + (f" ({ports})" if ports else "")


class DevLock:
    """The exclusive lock of one folder's `gateway dev`; held until ``release`` or exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.info: dict = {}
        self._fd: int | None = None

    def acquire(self, **info: int) -> None:
        """Take the lock and write ``info`` (pid, ports) in it; SystemExit naming the holder if taken."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by redis-server
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_info(fd)
            os.close(fd)
            if not _alive(holder.get("pid")):
                raise SystemExit(f"gateway dev: the redis-server of {describe(holder)}, which has exited, "
                                 f"is still stopping; try again in a moment") from None
            raise SystemExit(
                f"gateway dev: already running in this folder, {describe(holder)}, with its data in "
                f"{self.path.parent}; stop it first (Ctrl-C), or run this one in another folder"
            ) from None
        self._fd = fd
        self.update(**info)

    @property
    def fd(self) -> int:
        """The locked descriptor, for redis-server to inherit (pass_fds)."""
        assert self._fd is not None
        return self._fd

    def update(self, **info: int) -> None:
        """Add to what the lock file says about this instance (the Redis port, once known)."""
        assert self._fd is not None
        self.info.update(info)
        data = json.dumps(self.info).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock; the file stays (harmless)
            self._fd = None


def _read_info(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # not written yet: it is starting
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_ports(ports: dict[str, int]) -> None:
    """SystemExit naming the first port that cannot be listened on (before anything starts)."""
    for name, port in ports.items():
        if not 0 < port < 65536:
            raise SystemExit(f"gateway dev: port {port} ({name}) is not a TCP port; {PORT_HELP}")
        with socket.socket() as s:
            # As the listeners bind: a port left in TIME_WAIT is free, one that is listened on is not.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError as exc:
                raise SystemExit(
                    f"gateway dev: port {port} ({name}) is in use ({exc.strerror}); {PORT_HELP}"
                ) from None
