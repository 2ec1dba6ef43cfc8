#!/usr/bin/env python3
"""Run the Eclipse Paho MQTT interoperability suites against the gateway (and mosquitto, same run).

    python bench/mqtt_interop.py --repo PATH [--only gateway|mosquitto] [--timeout 90]

PATH is a clone (or bare mirror) of github.com/eclipse/paho.mqtt.testing; its `interoperability/`
folder is exported into a temporary directory and run from there (nothing is copied into this
repository). Each test runs in its own process with a timeout (`test_flow_control2` can hang),
with the suite's module globals (`host`, `port`, topics) set by a small wrapper.

The suites connect without credentials, so the gateway runs with `mqtt_allow_anonymous = true`
and its guest account (`mqtt_anonymous_user`, created here); the rate limit is off;
`mqtt_max_keepalive = 60` (test_server_keep_alive expects a broker that caps keepalive at 60 s);
`mqtt_deny_subscribe = ["test/nosubscribe"]` (test_subscribe_failure expects that filter refused).
mosquitto (Debian 2.0.11) runs anonymous on loopback with the same rule as an ACL file
(`topic deny test/nosubscribe`).
"""
from __future__ import annotations

import argparse
import os
import pwd
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.gateway import GatewayProcess, free_port  # noqa: E402

WRAPPER = """
import sys, unittest
sys.argv = [sys.argv[0]]
import {module} as suite
suite.host = "127.0.0.1"
suite.port = {port}
suite.topics = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
suite.wildtopics = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
suite.nosubscribe_topics = ("test/nosubscribe",)
suite.topic_prefix = ""
if hasattr(suite, "setData"):
    original = suite.setData
    def setData():
        original()
        suite.host = "127.0.0.1"
        suite.port = {port}
    suite.setData = setData
result = unittest.TextTestRunner(verbosity=0).run(unittest.TestSuite([suite.Test("{name}")]))
sys.exit(0 if result.wasSuccessful() else 1)
"""


def export_suite(repo: Path, into: Path) -> Path:
    git_dir = repo if (repo / "HEAD").exists() and not (repo / ".git").exists() else repo / ".git"
    archive = subprocess.run(["git", "--git-dir", str(git_dir), "archive", "HEAD", "interoperability"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "interoperability"


def test_names(suite_dir: Path, module: str) -> list[str]:
    text = (suite_dir / f"{module}.py").read_text()
    return re.findall(r"^    def (test\w*)\(self\)", text, re.M)


def run_suite(suite_dir: Path, module: str, port: int, timeout: float) -> dict[str, bool]:
    results = {}
    for name in test_names(suite_dir, module):
        code = WRAPPER.format(module=module, port=port, name=name)
        try:
            proc = subprocess.run([sys.executable, "-c", code], cwd=suite_dir, capture_output=True, text=True,
                                  timeout=timeout)
            ok = proc.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        results[name] = ok
        print(f"  {module}.{name}: {'pass' if ok else 'FAIL'}", flush=True)
    return results


def start_gateway(tmp: Path) -> GatewayProcess:
    data = tmp / "gw-data"
    data.mkdir()
    (data / "gateway.toml").write_text("messages_per_second = 0\nmqtt_allow_anonymous = true\nmqtt_max_keepalive = 60\n"
                                       'mqtt_deny_subscribe = ["test/nosubscribe"]\n')
    gw = GatewayProcess(data)
    gw.start()
    gw.add_user("mqtt-guest", "guest-password-unused")
    return gw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--only", choices=["gateway", "mosquitto"])
    parser.add_argument("--timeout", type=float, default=90)
    args = parser.parse_args()
    totals: dict[str, dict[str, dict[str, bool]]] = {}
    with tempfile.TemporaryDirectory(prefix="paho-interop-") as tmp_name:
        tmp = Path(tmp_name)
        suite_dir = export_suite(args.repo, tmp)
        for broker in ("gateway", "mosquitto"):
            if args.only not in (None, broker):
                continue
            print(f"{broker}:", flush=True)
            if broker == "gateway":
                gw = start_gateway(tmp)
                port = gw.mqtt_port
                stop = gw.stop
            else:
                port = free_port()
                (tmp / "mosquitto.acl").write_text("topic readwrite #\ntopic deny test/nosubscribe\n")
                # `user`: run as root, mosquitto would switch to its own account, which cannot read tmp.
                (tmp / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                                                    f"acl_file {tmp / 'mosquitto.acl'}\n"
                                                    f"user {pwd.getpwuid(os.getuid()).pw_name}\n")
                proc = subprocess.Popen(["mosquitto", "-c", str(tmp / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                time.sleep(0.5)

                def stop(proc: subprocess.Popen[bytes] = proc) -> None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(10)
            try:
                totals[broker] = {m: run_suite(suite_dir, m, port, args.timeout)
                                  for m in ("client_test", "client_test5")}
            finally:
                stop()
    print("\nEclipse Paho interoperability suites (passed/total):")
    for broker, suites in totals.items():
        counts = ", ".join(f"{m} {sum(r.values())}/{len(r)}" for m, r in suites.items())
        print(f"  {broker}: {counts}")
        for m, r in suites.items():
            failed = [n for n, ok in r.items() if not ok]
            if failed:
                print(f"    {m} failed: {' '.join(failed)}")


if __name__ == "__main__":
    main()
