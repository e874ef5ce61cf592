"""Processes of a benchmark run: start each in its own session (pinned to CPUs), read its CPU time, stop it.

Every process is started with ``start_new_session=True``, so it leads a process group and a session
of its own: stopping it signals the whole group (nginx's master and worker alike), and its CPU time
is the sum over every process of that session.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_cpu_seconds(sid: int) -> float:
    """utime + stime of every live process whose session id is ``sid`` (from /proc/PID/stat)."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # The command name may hold spaces or parentheses: split after the last ")".
        fields = stat[stat.rindex(b")") + 2:].split()
        # fields[0] is field 3 (state): session is field 6, utime 14, stime 15.
        if int(fields[3]) == sid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time every CPU of the machine spent busy so far (from /proc/stat), all processes."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2:].split()[3]) == sid:
                pids.append(int(entry.name))
    return pids


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Proc:
    """One started process (and its group); ``log`` holds its stderr (and stdout unless discarded)."""

    name: str
    popen: subprocess.Popen
    log: Path
    port: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        return session_cpu_seconds(self.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """Starts processes and guarantees they are all stopped (``stop_all`` in a finally)."""

    def __init__(self, workdir: Path, pin: bool) -> None:
        self.workdir = workdir
        self.pin = pin
        self.procs: list[Proc] = []
        cpus = sorted(os.sched_getaffinity(0))
        # The proxy under test gets the last CPU to itself; load generator, upstream and Redis
        # share the others. With one CPU, pinning means nothing.
        self.proxy_cpus = {cpus[-1]} if len(cpus) > 1 else set(cpus)
        self.infra_cpus = set(cpus[:-1]) if len(cpus) > 1 else set(cpus)

    def start(self, name: str, argv: list[str], *, role: str, port: int | None = None,
              env: dict[str, str] | None = None, discard_stdout: bool = False, cwd: Path | None = None,
              stdout: Path | None = None) -> Proc:
        """Start ``argv`` in a new session; ``role`` is "proxy" or "infra" (which CPUs it may use).
        Its stdout goes to its log, to /dev/null (``discard_stdout``) or to a file of its own (``stdout``)."""
        cpus = self.proxy_cpus if role == "proxy" else self.infra_cpus
        log = self.workdir / f"{name}.log"
        out = open(log, "ab")
        own = open(stdout, "ab") if stdout is not None else None

        def pin() -> None:
            if self.pin:
                os.sched_setaffinity(0, cpus)

        try:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=own or (subprocess.DEVNULL if discard_stdout else out),
                stderr=out, env=env, cwd=cwd, start_new_session=True, preexec_fn=pin,
            )
        finally:
            out.close()
            if own is not None:
                own.close()
        proc = Proc(name, popen, log, port)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it is still there after ``timeout``."""
        if proc not in self.procs:
            return
        self.procs.remove(proc)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; make sure nothing else of its group stays behind.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        if proc.popen.poll() is None:
            proc.popen.wait()

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def wait_for_port(proc: Proc, port: int, timeout: float = 20.0) -> None:
    """Until something accepts on 127.0.0.1:port; fails early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not listen on {port} within {timeout}s:\n{proc.log_tail()}")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def wait_until(predicate, what: str, timeout: float = 20.0, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}" + (f":\n{proc.log_tail()}" if proc else ""))
