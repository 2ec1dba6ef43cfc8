"""A real, small, fillable filesystem for one hub process, without touching the machine's mounts.

The hub runs in its own mount namespace (`unshare --mount`; as a non-root user with
`--user --map-root-user` too, which an unprivileged user may do) where a tmpfs of a few MB is
mounted over its data dir, holding a copy of what the dir held. Nothing outside that process
sees the tmpfs and it vanishes with the process, so a killed test leaves no mount behind.

The test reaches the tmpfs through ``/proc/PID/root/DATA_DIR`` (the hub's own view of the
file system) to fill it, free it, and look at the database the hub wrote. The hub keeps its PID
through the wrapper: `unshare` and this module's ``main`` both exec the next command.

Run as ``python -m tests.support.full_disk SIZE LEAVE FILES DATA_DIR -- COMMAND...``: mount a
tmpfs of SIZE bytes over DATA_DIR, copy DATA_DIR's files in, fill it until LEAVE bytes stay free
(-1: do not fill), then exec COMMAND. FILES >= 0 limits the tmpfs to that many files more than
it holds after the copy (a disk out of inodes: no new file, though bytes are free).
"""
from __future__ import annotations

import errno
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

FILLER = ".filler"
CHUNK = 1 << 20


@functools.cache
def unshare() -> list[str]:
    """How this machine gives a process its own mount namespace: as root directly, else (or in a
    container that refuses that) inside a new user namespace. Neither: a loud failure, no skip."""
    tried = []
    for command in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        if "--user" not in command and os.geteuid() != 0:
            continue
        probe = subprocess.run([*command, "true"], capture_output=True, text=True)
        if probe.returncode == 0:
            return command
        tried.append(f"{' '.join(command)}: {probe.stderr.strip()}")
    raise RuntimeError("the full-disk tests need a mount namespace of their own; " + "; ".join(tried) +
                       " (in a container: allow unshare, e.g. docker run --cap-add SYS_ADMIN, or user namespaces)")


def wrapper(data_dir: Path, size: int, leave: int = -1, files: int = -1) -> list[str]:
    """The command prefix that runs the next command with DATA_DIR on its own tmpfs."""
    return [*unshare(), sys.executable, "-m", "tests.support.full_disk", str(size), str(leave), str(files),
            str(data_dir), "--"]


def fill(path: Path, leave: int = 0) -> int:
    """Fill the filesystem holding `path` with one file until at most `leave` bytes stay free;
    returns the bytes the filler holds."""
    fd = os.open(path / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = CHUNK
        while chunk >= 512:
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 4
        size = os.fstat(fd).st_size
        if leave > 0:
            size = max(0, size - leave)
            os.ftruncate(fd, size)
        return size
    finally:
        os.close(fd)


def free(path: Path) -> None:
    """Give back the filler's space."""
    (path / FILLER).unlink(missing_ok=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def seen_from(pid: int, data_dir: Path) -> Path:
    """DATA_DIR as process `pid` sees it (its mount namespace)."""
    return Path(f"/proc/{pid}/root") / Path(data_dir).resolve().relative_to("/")


def main(argv: list[str]) -> None:
    size, leave, files, data_dir, sep, *command = argv
    assert sep == "--" and command, "usage: SIZE LEAVE FILES DATA_DIR -- COMMAND..."
    target = Path(data_dir).resolve()
    target.mkdir(parents=True, exist_ok=True)
    options = f"size={int(size)},mode=0700"
    if int(files) >= 0:  # the tmpfs's root and every copied file or directory take one inode each
        options += f",nr_inodes={1 + sum(1 for _ in target.rglob('*')) + int(files)}"
    underneath = os.open(target, os.O_RDONLY | os.O_DIRECTORY)  # the dir's files, once hidden
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], check=True)
    shutil.copytree(f"/proc/self/fd/{underneath}", target, dirs_exist_ok=True, symlinks=True)
    os.close(underneath)
    if int(leave) >= 0:
        fill(target, int(leave))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
