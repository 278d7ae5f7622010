"""``python -I -m weft.runtime.local.sandbox --reach=DIR=PATH ... -- COMMAND...``: make
directories reachable to a non-root container, then run ``COMMAND`` (``setpriv`` dropping to
the container's user) in their place.

Run as root by the node agent and ``weft exec`` (see :mod:`weft.runtime.local.users`), only
when Weft's Python lives below a directory other users cannot search (``/root`` with a pyenv,
say). In a mount namespace of its own (private to this process and what it runs; the host's
mounts are untouched), for each ``DIR``: a small tmpfs (mode 0755) goes over ``DIR`` and each
``PATH`` below it is bound back in at its own place. The container then reaches those paths
and nothing else that was in ``DIR``.

Standard library only, and nothing imported from the working directory (``-I``): this runs as
root in a directory the container chose.

Not for: deciding what to bind or who to run as (:mod:`weft.runtime.local.users`).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence

CLONE_NEWNS = 0x00020000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str) -> None:
    libc = _libc()
    _check(
        libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _mkdirs(root: str, path: str) -> None:
    """Create ``path`` below ``root`` (a fresh tmpfs), every directory 0755 whatever the
    umask."""
    current = root
    for part in os.path.relpath(path, root).split(os.sep):
        current = os.path.join(current, part)
        if not os.path.isdir(current):
            os.mkdir(current)
            os.chmod(current, 0o755)


def parse(args: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """``--reach=DIR=PATH ... -- COMMAND...`` -> the plan and the command. Raises ValueError."""
    plan: list[tuple[str, str]] = []
    args = list(args)
    while args and args[0] != "--":
        arg = args.pop(0)
        if not arg.startswith("--reach="):
            raise ValueError(f"unknown argument {arg!r}")
        ancestor, sep, path = arg[len("--reach=") :].partition("=")
        if not sep or not os.path.isabs(ancestor) or not os.path.isabs(path):
            raise ValueError(f"--reach needs DIR=PATH, absolute: {arg!r}")
        if not path.startswith(ancestor.rstrip(os.sep) + os.sep):
            raise ValueError(f"--reach: {path} is not below {ancestor}")
        plan.append((os.path.normpath(ancestor), os.path.normpath(path)))
    if not args or len(args) < 2:
        raise ValueError("nothing to run: -- COMMAND...")
    return plan, args[1:]


def apply(plan: Sequence[tuple[str, str]]) -> None:
    """Enter a mount namespace of our own and carry out ``plan`` in it."""
    _check(_libc().unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # our mounts must not reach the host (nor the pod's other processes)
    _mount(None, "/", None, MS_REC | MS_SLAVE, "")
    # every path is opened before any tmpfs hides it, and bound from the open descriptor
    fds = {path: os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for _, path in plan}
    try:
        done: set[str] = set()
        for ancestor, _ in plan:
            if ancestor in done:
                continue
            done.add(ancestor)
            _mount("weft-reach", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
            for other, path in plan:
                if other == ancestor:
                    _mkdirs(ancestor, path)
                    _mount(f"/proc/self/fd/{fds[path]}", path, None, MS_BIND | MS_REC, "")
    finally:
        for fd in fds.values():
            os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        plan, command = parse(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"weft sandbox: {exc}", file=sys.stderr)
        return 2
    try:
        apply(plan)
    except OSError as exc:
        print(f"weft sandbox: cannot make Weft's Python reachable: {exc}", file=sys.stderr)
        return 126
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"weft sandbox: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
