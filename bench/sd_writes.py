#!/usr/bin/env python3
"""Where an ingested reading's SD-card writes go: the WAL frames it causes, per SQLite b-tree.

    python bench/sd_writes.py [--readings 200] [--concurrency 16] [--page-size 4096]

`bench/footprint.py` gives the total (`write_bytes` of /proc/PID/io per reading); this explains it.
The hub is started with its CLI; after a warm-up the WAL is checkpointed and truncated, N readings
are sent over HTTP (sequentially from one device, then from C devices at once), and the WAL's
frame headers are read back: each frame is one page of one b-tree (found with SQLite's dbstat)
written by one commit. Every commit rewrites whole pages, so the figure to watch is frames per
reading, and which b-trees they belong to.

Nothing here runs in the test suite.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import shutil
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.gateway import GatewayProcess  # noqa: E402

PASSWORD = "sd writes bench passphrase"
WAL_HEADER = 32
FRAME_HEADER = 24


def wal_frames(wal: bytes) -> tuple[int, list[tuple[int, bool]]]:
    """(page size, [(page number, is the last frame of a commit)]) from a WAL file's bytes."""
    if len(wal) < WAL_HEADER:
        return 0, []
    page_size = struct.unpack(">I", wal[8:12])[0]
    frames = []
    offset = WAL_HEADER
    while offset + FRAME_HEADER + page_size <= len(wal):
        page, commit_size = struct.unpack(">II", wal[offset:offset + 8])
        frames.append((page, commit_size != 0))
        offset += FRAME_HEADER + page_size
    return page_size, frames


def page_owners(db: Path) -> dict[int, str]:
    """Page number -> "b-tree name (page kind)" for every page of the database."""
    conn = sqlite3.connect(db)
    try:
        return {page: f"{name} ({kind})" for name, page, kind in conn.execute("SELECT name, pageno, pagetype FROM dbstat")}
    finally:
        conn.close()


def measure(gw: GatewayProcess, tokens: list[str], room: str, readings: int, tag: str) -> None:
    db = gw.data_dir / "homeserver.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # start from an empty WAL (the hub is idle)
    conn.close()

    def send(k: int, token: str) -> None:
        for i in range(readings // len(tokens)):
            status, body = gw.request("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{tag}{k}-{i}",
                                      {"msgtype": "m.text", "body": f"t={i}"}, token)
            if status != 200:
                raise RuntimeError(f"send failed: {status} {body}")

    with concurrent.futures.ThreadPoolExecutor(len(tokens)) as pool:
        for fut in [pool.submit(send, k, t) for k, t in enumerate(tokens)]:
            fut.result()
    sent = readings // len(tokens) * len(tokens)
    wal = (gw.data_dir / "homeserver.db-wal").read_bytes()
    with tempfile.TemporaryDirectory() as snap_dir:  # dbstat needs the WAL's newest pages too
        snap = Path(snap_dir) / "copy.db"
        shutil.copy(db, snap)
        Path(str(snap) + "-wal").write_bytes(wal)
        owners = page_owners(snap)
    page_size, frames = wal_frames(wal)
    commits = sum(1 for _, last in frames if last)
    print(f"\n{tag}: {sent} readings, {len(tokens)} device(s): {commits} commits "
          f"({sent / max(commits, 1):.1f} readings per commit), {len(frames)} WAL frames of {page_size} bytes = "
          f"{len(frames) / sent:.2f} frames, {len(frames) * (page_size + FRAME_HEADER) / sent:.0f} WAL bytes per reading")
    by_tree = collections.Counter(owners.get(page, f"page {page} (freed since)") for page, _ in frames)
    for tree, count in by_tree.most_common():
        print(f"  {count / sent:6.2f} frames per reading  {tree}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=200, help="readings per phase (below one checkpoint)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--page-size", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / "gateway.toml").write_text("messages_per_second = 0\n")
        if args.page_size:
            conn = sqlite3.connect(data / "homeserver.db")
            conn.execute(f"PRAGMA page_size={args.page_size}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.close()
        with GatewayProcess(data) as gw:
            for i in range(args.concurrency):
                gw.add_user(f"dev{i}", PASSWORD)
            tokens = [gw.device_token(f"dev{i}", f"sensor{i}") for i in range(args.concurrency)]
            _, created = gw.request("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, tokens[0])
            room = created["room_id"]
            for token in tokens[1:]:
                gw.request("POST", f"/_matrix/client/v3/join/{room}", {}, token)
            measure(gw, tokens[:1], room, args.readings, "warm-up")  # the tables reach a steady shape
            measure(gw, tokens[:1], room, args.readings, "sequential")
            measure(gw, tokens, room, args.readings, "concurrent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
