"""`matrix-gateway backup FILE`: one archive holding a consistent snapshot of a (running) hub.

The database is copied with SQLite's online backup API, which reads one consistent snapshot even
while the hub's writer keeps committing in WAL mode. The archive (tar + gzip) starts with a
manifest (format marker, version, sizes, SHA-256 of every file) so that `restore` can refuse a
foreign or damaged file before it writes anything.

Media (format version 2): the files the snapshot's media rows name, as members `media/<sha256>`.
Media files never change once written (content-addressed), so copying them after the snapshot
gives the files of that snapshot; one that retention removed meanwhile is left out.

Application services (format version 3): the registration files `matrix-gateway appservice add`
put in DATA_DIR/appservices/, as members `appservices/<file>` (they hold the AS's tokens, and the
database holds its delivery positions: a restored hub goes on delivering where it was).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sqlite3
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable

from matrix_core.clock import now_ms
from matrix_core.store import maintenance
from matrix_core.store import media as media_rows

from ..config import CONFIG_FILE, DATABASE_FILE, SIGNING_KEY_FILE

FORMAT = "matrix-gateway-backup"
FORMAT_VERSION = 3  # 2: may carry media/<sha256> members; 3: appservices/<file> members
MANIFEST = "MANIFEST.json"
MAX_MANIFEST_BYTES = 64 * 1024
# Archive member name -> file name in the data dir. Nothing else is ever read or written.
MEMBERS = {DATABASE_FILE: DATABASE_FILE, SIGNING_KEY_FILE: SIGNING_KEY_FILE, CONFIG_FILE: CONFIG_FILE}
CHUNK = 1 << 20
MEDIA_MEMBER = re.compile(r"media/([0-9a-f]{64})")
APPSERVICE_DIR = "appservices"  # gateway/appservices.py's folder (not imported: it pulls in click)
APPSERVICE_MEMBER = re.compile(r"appservices/([A-Za-z0-9_][A-Za-z0-9._-]{0,200}\.ya?ml)")

Progress = Callable[[str, int, int], None]  # (step, done, total)


class BackupError(Exception):
    """A backup could not be made; the message names the problem."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    bytes: int
    database_bytes: int
    events: int


def _no_progress(step: str, done: int, total: int) -> None:
    pass


def snapshot_database(source: Path, dest: Path, progress: Progress = _no_progress) -> int:
    """Copy the live database (a consistent online snapshot, store/maintenance.py); returns its event count."""
    return maintenance.snapshot(source, dest, lambda done, total: progress("database", done, total))


def media_file(media_dir: Path, sha256: str) -> Path:
    """Where the content repository keeps a file (store/media_files.py's layout)."""
    return media_dir / sha256[:2] / sha256[2:4] / sha256


def media_members(db_copy: Path, media_dir: Path) -> dict[str, Path]:
    """Archive member name -> file, for every media file the snapshot's rows name."""
    conn = sqlite3.connect(f"file:{db_copy}?mode=ro", uri=True)
    try:
        hashes = media_rows.all_hashes(conn)  # empty for a database from before the content repository
    finally:
        conn.close()
    return {f"media/{sha}": media_file(media_dir, sha) for sha in sorted(hashes)
            if MEDIA_MEMBER.fullmatch(f"media/{sha}") and media_file(media_dir, sha).is_file()}


def appservice_members(data_dir: Path) -> dict[str, Path]:
    """Archive member name -> file, for each registration file in DATA_DIR/appservices/."""
    folder = data_dir / APPSERVICE_DIR
    if not folder.is_dir():
        return {}
    return {f"{APPSERVICE_DIR}/{p.name}": p for p in sorted(folder.iterdir())
            if p.is_file() and APPSERVICE_MEMBER.fullmatch(f"{APPSERVICE_DIR}/{p.name}")}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sources(data_dir: Path, config_file: Path) -> dict[str, Path]:
    database = data_dir / DATABASE_FILE
    if not database.exists():
        raise BackupError(f"{data_dir} holds no hub database ({DATABASE_FILE})")
    sources = {DATABASE_FILE: database, SIGNING_KEY_FILE: data_dir / SIGNING_KEY_FILE, CONFIG_FILE: config_file}
    for name, path in sources.items():
        if not path.is_file():
            raise BackupError(f"{path} is missing: the backup needs the {name} file")
    return sources


def write_archive(data_dir: Path, config_file: Path, staged: Path, out: IO[bytes],
                  progress: Progress = _no_progress) -> dict[str, Any]:
    """Snapshot the database into the directory `staged`, then write the whole archive (manifest
    first) to `out`, a file object written in order only (a file, or the web page's download
    stream: nothing is held in memory). Returns the manifest."""
    sources = _sources(data_dir, config_file)
    db_copy = staged / DATABASE_FILE
    events = snapshot_database(sources[DATABASE_FILE], db_copy, progress)
    files = {DATABASE_FILE: db_copy, SIGNING_KEY_FILE: sources[SIGNING_KEY_FILE], CONFIG_FILE: config_file,
             **media_members(db_copy, data_dir / "media"), **appservice_members(data_dir)}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created_ts": now_ms(),
        "events": events,
        "files": {name: {"size": path.stat().st_size, "sha256": sha256_file(path)} for name, path in files.items()},
    }
    total = sum(entry["size"] for entry in manifest["files"].values())
    written = 0
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=6) as tar:
        blob = json.dumps(manifest, indent=1, sort_keys=True).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mode, info.mtime = len(blob), 0o600, manifest["created_ts"] // 1000
        tar.addfile(info, io.BytesIO(blob))
        for name, path in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = path.stat().st_size, 0o600, int(path.stat().st_mtime)
            with open(path, "rb") as fh:
                tar.addfile(info, _Counting(fh, lambda n: progress("archive", written + n, total)))
            written += info.size
    return manifest


def stream_backup(data_dir: Path, config_file: Path, out: IO[bytes]) -> None:
    """The archive for the Status page's download (`GET /_gateway/admin/v1/backup`): the
    database snapshot staged in a temporary directory inside the data dir (removed after)."""
    with tempfile.TemporaryDirectory(prefix=".backup-", dir=data_dir) as tmp:
        write_archive(data_dir, config_file, Path(tmp), out)


def make_backup(data_dir: Path, config_file: Path, out: Path, progress: Progress = _no_progress) -> BackupResult:
    """Write the archive to `out` (never overwriting: it must not exist yet)."""
    if out.exists():
        raise BackupError(f"{out} already exists: choose a new file name (a backup never overwrites)")
    _sources(data_dir, config_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".backup-", dir=out.parent) as tmp:
        staged = Path(tmp)
        partial = staged / "archive.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds the private key
        with os.fdopen(fd, "wb") as raw:
            manifest = write_archive(data_dir, config_file, staged, raw, progress)
            raw.flush()
            os.fsync(raw.fileno())
        try:
            os.link(partial, out)  # atomic, and fails rather than replace a file that appeared meanwhile
        except FileExistsError:
            raise BackupError(f"{out} already exists: choose a new file name (a backup never overwrites)") from None
        except OSError:  # no hard links (a FAT-formatted USB stick): rename, after checking again
            if out.exists():
                raise BackupError(f"{out} already exists: choose a new file name (a backup never overwrites)") from None
            os.replace(partial, out)
    return BackupResult(out, out.stat().st_size, manifest["files"][DATABASE_FILE]["size"], manifest["events"])


class _Counting(io.RawIOBase):
    """A reader that reports how many bytes have passed, for the progress bar."""

    def __init__(self, fh: io.BufferedReader, report: Callable[[int], None]) -> None:
        self._fh, self._report, self._done = fh, report, 0

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self._done += len(data)
        self._report(self._done)
        return data
