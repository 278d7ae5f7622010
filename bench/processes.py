"""Starting the servers of a run, waiting until they serve, and always stopping them.

Each server runs in its own session (so a Ctrl-C in the terminal reaches only the benchmark, which
then stops everything in order) with its output in a log file in the run's temporary directory;
a failure quotes the end of that log. :class:`Supervisor` owns every process it started and stops
them all -- SIGTERM to the process group, then SIGKILL after a grace period -- when its ``with``
block ends for any reason, and at interpreter exit as a last resort. It only ever signals process
groups it created.

Not for: load generation (:mod:`bench.load` runs wrk to completion itself).
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

LOOPBACK = "127.0.0.1"


class ServerFailed(RuntimeError):
    """A server exited or never became ready; the message quotes the end of its log."""

    def __init__(self, summary: str, log_tail: str = "") -> None:
        super().__init__(f"{summary}; its log ends:\n{log_tail}" if log_tail else summary)
        self.summary = summary
        self.log_tail = log_tail

    @property
    def brief(self) -> str:
        """One line: the summary and the last line of the log."""
        last = next((ln.strip() for ln in reversed(self.log_tail.splitlines()) if ln.strip()), "")
        return f"{self.summary} (last log line: {last[:200]})" if last else self.summary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def http_get(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, bytes]:
    """One ``GET http://127.0.0.1:<port><path>`` on a fresh connection: (status, body)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def pinned(argv: Sequence[str], cpu: int | None) -> list[str]:
    """``argv`` run under ``taskset -c <cpu>`` (which ``exec``s it: the PID stays the same)."""
    return list(argv) if cpu is None else ["taskset", "-c", str(cpu), *argv]


class Server:
    """One started process: its PID, its log, and how to tell whether it is still running."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None):
        self.name = name
        self.argv = list(argv)
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def check_alive(self) -> None:
        if not self.alive():
            raise ServerFailed(
                f"{self.name} exited with status {self.proc.returncode}", self.log_tail()
            )

    def wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        """Poll ``ready`` until it returns true; fail if the process exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            with contextlib.suppress(OSError, http.client.HTTPException):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise ServerFailed(f"{self.name} not ready after {timeout:g} s", self.log_tail())
            time.sleep(0.05)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds, reap the process.

        The group is signalled only while its leader is unreaped (running or a zombie), so its
        group id cannot yet belong to anyone else.
        """
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while not self._exited_unreaped() and time.monotonic() < deadline:
            time.sleep(0.02)
        # Whatever the group still holds (the process, or children it left behind) goes now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()

    def _exited_unreaped(self) -> bool:
        try:
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            return os.waitid(os.P_PID, self.pid, flags) is not None
        except ChildProcessError:
            return True

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited {self.proc.returncode}"
        return f"<Server {self.name} pid={self.pid} {state}>"


class Supervisor:
    """Owns the servers of a run; stops them (newest first) on exit, whatever the exit."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self._servers: list[Server] = []
        atexit.register(self.stop_all)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Server:
        server = Server(name, argv, self.logdir / f"{name}.log", env)
        self._servers.append(server)
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        if server in self._servers:
            self._servers.remove(server)

    @contextlib.contextmanager
    def stopped_on_failure(self, server: Server) -> Iterator[Server]:
        """Stop ``server`` if the block raises (a case that never got ready must not linger)."""
        try:
            yield server
        except BaseException:
            self.stop(server)
            raise

    def stop_all(self) -> None:
        while self._servers:
            self._servers.pop().stop()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
        atexit.unregister(self.stop_all)

    def __repr__(self) -> str:
        return f"<Supervisor {len(self._servers)} servers: {self._servers!r}>"
