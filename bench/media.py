#!/usr/bin/env python3
"""The content repository: our gateway against a real Synapse, same run (issue 15).

    python bench/media.py [--rounds 3] [--only gateway|synapse]

For each server, one after the other (never both at once: two cores shared with the client):

* upload MB/s: POST /_matrix/media/v3/upload of a 10 MB file (random bytes, so no dedup), best
  and median of `rounds`;
* download MB/s: GET /_matrix/client/v1/media/download of that file with the token;
* thumbnail p50: GET /_matrix/client/v1/media/thumbnail of a 1280x960 JPEG at 20 distinct sizes
  (each made for the first time: Synapse with dynamic_thumbnails on), and again (cached);
* RSS during a 50 MB upload: the server's resident memory sampled every 20 ms while it streams,
  peak minus the value just before.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402
from PIL import Image  # noqa: E402

PASSWORD = "bench-password-1"
FILE_BYTES = 10_000_000
BIG_BYTES = 50_000_000


@dataclass
class Result:
    server: str
    upload_mbps: list[float] = field(default_factory=list)
    download_mbps: list[float] = field(default_factory=list)
    thumb_first_ms: list[float] = field(default_factory=list)
    thumb_cached_ms: list[float] = field(default_factory=list)
    rss_before: int = 0
    rss_peak: int = 0
    errors: list[str] = field(default_factory=list)


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def jpeg() -> bytes:
    im = Image.effect_mandelbrot((1280, 960), (-2.0, -1.2, 1.0, 1.2), 100).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


async def measure(base: str, token: str, server_name: str, pid_of: Callable[[], int], rounds: int) -> Result:
    result = Result("")
    auth = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async def upload(data: bytes, ctype: str = "application/octet-stream") -> str:
            async with http.post(f"{base}/_matrix/media/v3/upload?filename=f.bin", data=data,
                                 headers={**auth, "Content-Type": ctype}) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"upload: {resp.status} {body}")
                return str(body["content_uri"])

        def path(mxc: str) -> str:
            return mxc[len("mxc://"):]

        for _ in range(rounds):
            data = os.urandom(FILE_BYTES)
            started = time.perf_counter()
            mxc = await upload(data)
            result.upload_mbps.append(FILE_BYTES / 1e6 / (time.perf_counter() - started))
            started = time.perf_counter()
            async with http.get(f"{base}/_matrix/client/v1/media/download/{path(mxc)}", headers=auth) as resp:
                got = 0
                async for chunk in resp.content.iter_chunked(1 << 16):
                    got += len(chunk)
                if resp.status != 200 or got != FILE_BYTES:
                    result.errors.append(f"download: {resp.status}, {got} bytes")
            result.download_mbps.append(FILE_BYTES / 1e6 / (time.perf_counter() - started))

        picture = await upload(jpeg(), "image/jpeg")
        sizes = [(32 + 16 * i, 24 + 12 * i) for i in range(20)]
        for timings in (result.thumb_first_ms, result.thumb_cached_ms):
            for i, (w, h) in enumerate(sizes):
                method = "crop" if i % 2 else "scale"
                started = time.perf_counter()
                async with http.get(f"{base}/_matrix/client/v1/media/thumbnail/{path(picture)}"
                                    f"?width={w}&height={h}&method={method}", headers=auth) as resp:
                    await resp.read()
                    if resp.status != 200:
                        result.errors.append(f"thumbnail {w}x{h}: {resp.status}")
                timings.append((time.perf_counter() - started) * 1000)

        big = os.urandom(BIG_BYTES)
        pid = pid_of()
        result.rss_before = result.rss_peak = rss_of(pid)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                result.rss_peak = max(result.rss_peak, rss_of(pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            await upload(big)
        finally:
            done.set()
            sampler.join()
    return result


def run_gateway(rounds: int) -> Result:
    from tests.support.gateway import GatewayProcess

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        (data_dir / "gateway.toml").write_text("max_upload_size_mb = 64\n")
        with GatewayProcess(data_dir) as gw:
            gw.add_user("bench", PASSWORD)
            token = gw.login("bench", PASSWORD)
            result = asyncio.run(measure(str(gw.http_url), token, "localhost", lambda: gw.pid, rounds))
    result.server = "gateway"
    return result


def run_synapse(rounds: int) -> Result:
    from tests.support.synapse import SynapseProcess

    with tempfile.TemporaryDirectory() as tmp:
        config: dict[str, Any] = {"max_upload_size": "64M", "dynamic_thumbnails": True}
        with SynapseProcess(Path(tmp) / "synapse", federation=False, extra_config=config) as syn:
            _, token = syn.register_user("bench", PASSWORD)
            assert syn.client_url and syn.server_name
            pid = syn.pid
            assert pid is not None
            result = asyncio.run(measure(syn.client_url, token, syn.server_name, lambda: pid, rounds))
            result.server = f"synapse {syn.version}"
    return result


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(results: list[Result]) -> None:
    print(f"{'server':<22} {'upload MB/s':>12} {'download MB/s':>14} {'thumb p50 ms':>13} {'cached p50':>11} "
          f"{'RSS +MB (50 MB up)':>19}")
    for r in results:
        print(f"{r.server:<22} {p50(r.upload_mbps):>12.1f} {p50(r.download_mbps):>14.1f} "
              f"{p50(r.thumb_first_ms):>13.1f} {p50(r.thumb_cached_ms):>11.1f} "
              f"{(r.rss_peak - r.rss_before) / 1e6:>19.1f}")
        for err in r.errors:
            print(f"  error: {err}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("gateway", "synapse"))
    args = parser.parse_args()
    results = []
    if args.only in (None, "gateway"):
        results.append(run_gateway(args.rounds))
    if args.only in (None, "synapse"):
        results.append(run_synapse(args.rounds))
    report(results)


if __name__ == "__main__":
    main()
