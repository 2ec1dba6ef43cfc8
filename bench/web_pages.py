#!/usr/bin/env python3
"""The hub's own web pages (issue 18): first-load bytes, and the hub's memory with browser tabs open.

    python bench/web_pages.py [--tabs 5] [--settle 5]

1. First load: every file the page loads (index.html, its stylesheet and icon, app.js and each
   ES module it imports, followed through the imports), as sent with `Accept-Encoding: gzip`.
2. Hub RSS: idle (started, an admin account, a few readings in a room), then with `--tabs`
   browser tabs (Playwright pages in separate contexts, Debian's /usr/bin/chromium) signed in on
   Home (each holding a /sync long-poll), then the same tabs on the MQTT page (each also holding
   the topic tree's long-poll), then after they closed. Each figure is read after `--settle`
   seconds with readings still arriving (one mosquitto_pub a second, with a device token), so the
   long-polls are answered and renewed while we measure. Each figure is the median of 5 readings
   0.5 s apart (a sign-in's scrypt is a passing 16 MB).

The series API's p50/p99 (a day and a week of one-minute readings, at 10k and 1M points) is
bench/series.py's. Nothing here runs in the test suite.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.gateway import GatewayProcess  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
USER, PASSWORD = "admin", "web pages bench passphrase"


def fetch(url: str) -> bytes:
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


def first_load(base: str) -> list[tuple[str, int]]:
    """(path, compressed bytes) of every file the page loads first."""
    import gzip

    html = gzip.decompress(fetch(base + "/")).decode()
    sizes = [("/", len(fetch(base + "/")))]
    todo = re.findall(r'(?:href|src)="(/web/[^"]+)"', html)
    seen: set[str] = set()
    while todo:
        path = todo.pop(0)
        if path in seen:
            continue
        seen.add(path)
        body = fetch(base + path)
        sizes.append((path, len(body)))
        if path.endswith(".js"):
            text = gzip.decompress(body).decode()
            todo += ["/web/" + n for n in re.findall(r'^import\b[^;]*?from\s+"\./([^"]+)"', text, re.M)]
    return sizes


def settled_rss_mb(pid: int, settle: float) -> float:
    time.sleep(settle)
    readings = []
    for _ in range(5):
        readings.append(rss_mb(pid))
        time.sleep(0.5)
    return sorted(readings)[2]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def publisher(gw: GatewayProcess, token: str, stop: threading.Event) -> None:
    """A reading a second, as a sensor sends it: with its device token (a password would cost an
    scrypt, a 16 MB transient allocation, at each connection and blur the RSS figures)."""
    n = 0
    while not stop.wait(1.0):
        n += 1
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(gw.mqtt_port), "-u", USER, "-P", token,
                        "-t", f"bench/room{n % 3}/temp", "-m", f'{{"t": {20 + n % 7}.5}}', "-q", "1"],
                       capture_output=True, timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tabs", type=int, default=5)
    parser.add_argument("--settle", type=float, default=5.0)
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench-web-"))
    gw = GatewayProcess(tmp / "data")
    gw.start()
    stop = threading.Event()
    try:
        gw.add_user(USER, PASSWORD, admin=True)
        base = gw.http_url or ""
        sizes = first_load(base)
        print("first load (gzip):")
        for path, n in sizes:
            print(f"  {path:22} {n / 1024:6.1f} KB")
        print(f"  {'total':22} {sum(n for _, n in sizes) / 1024:6.1f} KB in {len(sizes)} files")

        feeder = threading.Thread(target=publisher, args=(gw, gw.device_token(USER, "benchsensor"), stop), daemon=True)
        feeder.start()
        idle = settled_rss_mb(gw.pid, args.settle)
        print(f"hub RSS idle (readings arriving, no tab): {idle:.1f} MB")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            contexts, pages = [], []
            for _ in range(args.tabs):
                context = browser.new_context()
                page = context.new_page()
                page.goto(base + "/")
                page.get_by_label("User name").fill(USER)
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                expect(page.get_by_role("list", name="Places and devices").get_by_role("listitem").first).to_be_visible(
                    timeout=20000)
                contexts.append(context)
                pages.append(page)
            home = settled_rss_mb(gw.pid, args.settle)
            print(f"hub RSS with {args.tabs} tabs on Home (a /sync long-poll each): {home:.1f} MB "
                  f"(+{home - idle:.1f} MB, {(home - idle) / args.tabs * 1024:.0f} KB a tab)")
            for page in pages:
                page.get_by_role("button", name="MQTT").click()
                expect(page.get_by_role("list", name="Topics").locator("li[data-topic]").first).to_be_visible(timeout=20000)
            on_mqtt = settled_rss_mb(gw.pid, args.settle)
            print(f"hub RSS with {args.tabs} tabs on MQTT (+ the topic tree's long-poll each): {on_mqtt:.1f} MB "
                  f"(+{on_mqtt - idle:.1f} MB over idle)")
            for context in contexts:
                context.close()
            browser.close()
        print(f"hub RSS after the tabs closed: {settled_rss_mb(gw.pid, args.settle):.1f} MB")
        print("series API p50/p99: python bench/series.py")
    finally:
        stop.set()
        gw.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
