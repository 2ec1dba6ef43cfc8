"""The long fuzzing run: a million mutated inputs per protocol through the pure layers, and
optionally a longer end-to-end pass against a CLI-started hub.

    .venv/bin/python bench/fuzz.py [--count 1000000 | --seconds S] [--seed 20] [PROTOCOL ...]
    .venv/bin/python bench/fuzz.py --e2e 60 [--seed 20]        # MQTT, CoAP, HTTP: 60 s each

Protocols (tests/support/fuzz_targets.py): mqtt (codec: any bytes at levels None/4/5, whole and
split; round trips; a PUBLISH as stored event content and back), mqtt-connection (the connection
state machine with a broker that accepts everything; what it writes back must decode), coap
(the hub's fast-path parser and aiocoap's decoder, translation, bodies; the two parsers must
agree), cbor (device CBOR -> event value -> CBOR, MQTT raw payload carrier, CoAP bodies), json
(strict JSON parser, CoAP JSON bodies, MQTT JSON payloads, request targets). Only the
documented errors may come out; anything else is printed with its input (hex) and seed, which
reproduce it: `Mutator(seed, corpus)` yields the same inputs in the same order (`index`).

Prints, per protocol: inputs tried, inputs/s, the slowest single input, the inputs counted apart
because another issue-20 change fixes their class, and the failures. Exit status 1 on any
failure. Target: >= 1,000,000 inputs per protocol with no failure.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.fuzz_targets import CORPORA, TARGETS, KnownElsewhere  # noqa: E402
from tests.support.mutate import run  # noqa: E402


def pure(protocols: list[str], seed: int, count: int | None, seconds: float | None) -> int:
    failed = 0
    total = 0
    for name in protocols:
        result = run(name, TARGETS[name], CORPORA[name](), seed=seed, count=count, seconds=seconds,
                     known=(KnownElsewhere,), max_failures=50)
        total += result.count
        print(f"{name:16} {result.count:>10,} inputs  {result.seconds:7.1f} s  {result.rate:>9,.0f} inputs/s  "
              f"slowest {result.slowest * 1000:6.1f} ms  failures {len(result.failures)}", flush=True)
        print(f"{'':16} slowest input ({len(result.slowest_input)} bytes): {result.slowest_input[:64].hex()}"
              f"{'...' if len(result.slowest_input) > 64 else ''}")
        for why, n in sorted(result.known.items()):
            print(f"{'':16} counted apart ({n:,} inputs): {why}")
        for failure in result.failures:
            print(f"FAILURE {failure}")
        failed += len(result.failures)
    print(f"total {total:,} inputs, {failed} failures (seed {seed})")
    return failed


def e2e(seed: int, seconds: float) -> int:
    from tests.support.fuzz_e2e import fuzz_coap, fuzz_http, fuzz_mqtt, tracebacks
    from tests.support.gateway import GatewayProcess

    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        gw = GatewayProcess(Path(tmp) / "data")
        gw.start()
        try:
            gw.add_user("alice", "fuzz password", admin=True)
            token = gw.device_token("alice", "fuzzer")
            status, body = gw.request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "fuzz"}, token=token)
            assert status == 200, body
            room = body["room_id"]
            results = [  # HTTP first: the MQTT fuzz makes alice a member of many rooms (heavier syncs)
                fuzz_http(gw.http_port, token, "@alice:localhost", room, seed, seconds),
                fuzz_coap(gw.coap_port, token, "#fuzz:localhost", seed, seconds),
                fuzz_mqtt(gw.mqtt_port, "alice", token, seed, seconds),
            ]
            alive = gw.proc is not None and gw.proc.poll() is None
            status, _ = gw.request("GET", "/_matrix/client/v3/account/whoami", token=token)
        finally:
            t0 = time.monotonic()
            code = gw.stop(timeout=60)
            stop_s = time.monotonic() - t0
        for r in results:
            print(f"{r.protocol:6} {r.count:>8,} inputs  {r.seconds:6.1f} s  {r.rate:>7,.0f} inputs/s  "
                  f"failures {len(r.failures)}  answers {dict(sorted(r.answers.items()))}", flush=True)
            for why, n in sorted(r.known.items()):
                print(f"{'':6} not sent / counted apart ({n:,}): {why}")
            for f in r.failures[:20]:
                print(f"FAILURE {f}")
            failed += len(r.failures)
        unknown, known = tracebacks(gw.log_path().read_text(errors="replace"))
        for why, n in known.items():
            print(f"log: {n} traceback(s) of a class another change fixes: {why}")
        for block in unknown[:5]:
            print(f"FAILURE traceback in the hub's log:\n{block}")
        failed += len(unknown)
        print(f"hub alive after the fuzz: {alive}, whoami {status}, SIGTERM to exit {stop_s:.1f} s, exit status {code}")
        # 15 s: the systemd unit's TimeoutStopSec, after which the hub is killed mid-save
        failed += (not alive) + (status != 200) + (code != 0) + (stop_s > 15)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protocols", nargs="*", choices=[[], *TARGETS], default=[], metavar="PROTOCOL",
                        help=f"any of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--count", type=int, default=None, help="inputs per protocol (default 1,000,000)")
    parser.add_argument("--seconds", type=float, default=None, help="time budget per protocol instead of a count")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--e2e", type=float, default=None, metavar="SECONDS",
                        help="instead: fuzz a live hub over MQTT, CoAP and HTTP for SECONDS each")
    args = parser.parse_args()
    if args.e2e is not None:
        return 1 if e2e(args.seed, args.e2e) else 0
    count = args.count if args.count is not None or args.seconds is not None else 1_000_000
    return 1 if pure(args.protocols or list(TARGETS), args.seed, count, args.seconds) else 0


if __name__ == "__main__":
    sys.exit(main())
