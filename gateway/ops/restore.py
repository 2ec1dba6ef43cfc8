"""`matrix-gateway restore FILE --data-dir DIR`: check everything first, then write.

The archive is read into a staging directory beside DIR and every check runs there: format
marker and version, the exact set of files, sizes and SHA-256, SQLite's integrity check and
schema versions, the signing key and the config. Only then are the files moved into DIR, which
must be new or empty: a restore never overwrites a hub.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import sqlite3
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from matrix_core.signing import parse_signing_key
from matrix_core.store import maintenance
from matrix_core.store.migrations import COMPONENTS

from ..config import CONFIG_FILE, DATABASE_FILE, SIGNING_KEY_FILE, ConfigError, load_config
from .backup import (APPSERVICE_DIR, APPSERVICE_MEMBER, CHUNK, FORMAT, FORMAT_VERSION, MANIFEST, MAX_MANIFEST_BYTES,
                     MEDIA_MEMBER, MEMBERS, media_file)

Progress = Callable[[str, int, int], None]


class RestoreError(Exception):
    """The backup cannot be restored here; the message names the problem. Nothing was written."""


@dataclass(frozen=True)
class RestoreResult:
    data_dir: Path
    events: int
    server_name: str


def _no_progress(step: str, done: int, total: int) -> None:
    pass


def check_target(data_dir: Path) -> None:
    if data_dir.exists() and not data_dir.is_dir():
        raise RestoreError(f"{data_dir} exists and is not a directory")
    if data_dir.is_dir():
        present = sorted(p.name for p in data_dir.iterdir())
        if present:
            shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
            raise RestoreError(f"{data_dir} is not empty (holds {shown}): restore only into a new or empty "
                               "directory, so that no hub is overwritten")


def read_manifest(tar: tarfile.TarFile, source: Path) -> dict[str, Any]:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isfile() or first.size > MAX_MANIFEST_BYTES:
        raise RestoreError(f"{source} is not a matrix-gateway backup (no {MANIFEST} at its start)")
    fh = tar.extractfile(first)
    assert fh is not None
    try:
        manifest = json.loads(fh.read())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RestoreError(f"{source}: its {MANIFEST} is not valid JSON: the file is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RestoreError(f"{source} is not a matrix-gateway backup (format marker missing)")
    version = manifest.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise RestoreError(f"{source} is backup format version {version!r}; this program reads up to {FORMAT_VERSION}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not set(MEMBERS) <= set(files) or not all(
            name in MEMBERS or MEDIA_MEMBER.fullmatch(name) or APPSERVICE_MEMBER.fullmatch(name) for name in files):
        raise RestoreError(f"{source}: the manifest lists {sorted(files or [])}, expected {sorted(MEMBERS)}")
    return manifest


def extract_checked(tar: tarfile.TarFile, manifest: dict[str, Any], staging: Path, source: Path,
                    progress: Progress) -> None:
    """Stream each member to `staging`, checking its size and SHA-256 against the manifest."""
    expected = manifest["files"]
    total = sum(int(entry.get("size", 0)) for entry in expected.values())
    done = 0
    seen: set[str] = set()
    while (member := tar.next()) is not None:  # after the manifest (iterating would restart)
        if member.name not in expected or member.name in seen or not member.isfile():
            raise RestoreError(f"{source}: unexpected archive member {member.name!r}: the file is not a clean backup")
        seen.add(member.name)
        digest = hashlib.sha256()
        fh = tar.extractfile(member)
        assert fh is not None
        target = staging_path(staging, member.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
                progress("extract", done, total)
        entry = expected[member.name]
        named = MEDIA_MEMBER.fullmatch(member.name)
        if member.size != entry.get("size") or digest.hexdigest() != entry.get("sha256") or (
                named is not None and named.group(1) != digest.hexdigest()):
            raise RestoreError(f"{source}: {member.name} does not match its checksum: the backup is damaged")
    missing = set(expected) - seen
    if missing:
        raise RestoreError(f"{source}: missing {', '.join(sorted(missing))}: the backup is incomplete")


def staging_path(staging: Path, name: str) -> Path:
    """Where a checked member goes: a data dir file, a media file in its content-addressed place,
    or an appservice registration in appservices/."""
    named = MEDIA_MEMBER.fullmatch(name)
    if named:
        return media_file(staging / "media", named.group(1))
    registration = APPSERVICE_MEMBER.fullmatch(name)
    return staging / APPSERVICE_DIR / registration.group(1) if registration else staging / MEMBERS[name]


def check_database(path: Path, source: Path) -> int:
    """Integrity, a known schema, and the number of events."""
    conn = maintenance.open_read_only(path)
    try:
        verdict = maintenance.integrity(conn)
        if verdict != "ok":
            raise RestoreError(f"{source}: the database fails SQLite's integrity check ({verdict})")
        versions = maintenance.schema_versions(conn)
        for component, found in versions.items():
            steps = COMPONENTS.get(component)
            latest = steps[-1][0] if steps else 0
            if found > latest:
                raise RestoreError(f"{source}: database schema of {component!r} is version {found}, newer than "
                                   f"this program knows ({latest}): upgrade matrix-gateway first")
        events = maintenance.event_count(conn)
    except sqlite3.DatabaseError as exc:
        raise RestoreError(f"{source}: the database cannot be read: {exc}") from None
    finally:
        conn.close()
    return events


def restore(source: Path, data_dir: Path, progress: Progress = _no_progress) -> RestoreResult:
    check_target(data_dir)
    if not source.is_file():
        raise RestoreError(f"{source}: no such backup file")
    parent = data_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{data_dir.name}.restore-", dir=parent) as tmp:
        staging = Path(tmp)
        try:
            with tarfile.open(source, mode="r:gz") as tar:
                manifest = read_manifest(tar, source)
                extract_checked(tar, manifest, staging, source, progress)
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise RestoreError(f"{source} is not a readable matrix-gateway backup "
                               f"(not a complete gzip-compressed tar archive: {exc})") from None
        events = check_database(staging / DATABASE_FILE, source)
        try:
            parse_signing_key((staging / SIGNING_KEY_FILE).read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise RestoreError(f"{source}: {SIGNING_KEY_FILE} is not a signing key: {exc}") from None
        try:
            config = load_config(staging, None, {}, create=False)
        except ConfigError as exc:
            raise RestoreError(f"{source}: the config in the backup is not valid: {exc}") from None
        if (staging / APPSERVICE_DIR).is_dir():
            from matrix_core.appservice_rules import RegistrationError, check_registrations

            from ..appservices import read_registration

            os.chmod(staging / APPSERVICE_DIR, 0o700)  # the files hold the appservices' tokens
            try:  # the hub would refuse to start with them
                check_registrations([read_registration(p) for p in sorted((staging / APPSERVICE_DIR).iterdir())],
                                    config.server_name)
            except (ConfigError, RegistrationError) as exc:
                raise RestoreError(f"{source}: an appservice registration in the backup is not valid: {exc}") from None
        check_target(data_dir)  # still new or empty after the checks
        os.chmod(staging, 0o700)
        if data_dir.exists():
            for name in MEMBERS.values():
                os.replace(staging / name, data_dir / name)
            for folder in ("media", APPSERVICE_DIR):
                if (staging / folder).is_dir():
                    os.replace(staging / folder, data_dir / folder)
        else:
            os.rename(staging, data_dir)
            staging.mkdir()  # TemporaryDirectory cleans up its (now empty) path
    return RestoreResult(data_dir, events, config.server_name)
