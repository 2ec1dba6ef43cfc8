"""Start-up and shut-down of the whole hub in one asyncio loop.

Order matters on the way down: stop accepting, release long-polls, let in-flight requests finish
(their writes commit), then drain the writer and close the database. Only then exit 0.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Protocol

from matrix_core.client_api.http import make_app
from matrix_core.client_api.http_listener import HttpListener
from matrix_core.homeserver import Homeserver, HomeserverSettings
from matrix_core.push_gateway import RetryPolicy
from matrix_core.ratelimit import RateLimit

from .appservices import load_registrations
from .config import CONFIG_FILE, DATABASE_FILE, GatewayConfig, load_or_create_signing_key
from .ops.appliance import Appliance
from .resources import install_loop_exception_handler, raise_open_files_limit
from .ops.disk import EXIT_DISK_FULL, disk_full_at_start
from .ports import BIND_ERRNOS, explain_bind_failure

log = logging.getLogger("gateway")


def settings_for(config: GatewayConfig, data_dir: Path) -> HomeserverSettings:
    return HomeserverSettings(
        server_name=config.server_name,
        database_path=data_dir / DATABASE_FILE,
        signing_key=load_or_create_signing_key(data_dir),
        enable_registration=config.enable_registration,
        sqlite_synchronous=config.sqlite_synchronous.upper(),
        commit_window_ms=config.commit_window_ms,
        message_rate=RateLimit(config.messages_per_second, config.messages_burst),
        max_rooms_per_user=config.max_rooms_per_user,
        admin_contact=config.admin_contact,
        presence_enabled=config.presence_enabled,
        public_base_url=config.public_base_url,
        turn_uris=config.turn_uris,
        turn_shared_secret=config.turn_shared_secret,
        turn_user_lifetime_s=config.turn_user_lifetime_s,
        push_retry=RetryPolicy(give_up_after_s=config.push_give_up_after_s),
        max_upload_bytes=config.max_upload_size_mb << 20,
        media_quota_per_user_bytes=config.media_quota_per_user_mb << 20,
        media_quota_total_bytes=config.media_quota_total_mb << 20,
        appservices=load_registrations(config, data_dir),
    )


class Frontend(Protocol):
    """A protocol listener in front of the core (CoAP, MQTT, federation): started after the
    homeserver is ready, stopped before it closes."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> str:
        """One short `name=address` item for the ready line."""
        ...


def build_frontends(config: GatewayConfig, data_dir: Path, hs: Homeserver) -> list[Frontend]:
    """Every listener besides HTTP. Each front end registers itself here with one entry."""
    frontends: list[Frontend] = []
    from matrix_core.federation.server import FederationFrontend  # first: sets hs.federation_client, hs.keyring
    frontends.append(FederationFrontend(hs, data_dir, config.bind, config.federation_port,
                                        config.federation_tls_cert, config.federation_tls_key,
                                        config.federation_tls_verify, config.federation_allow_loopback,
                                        idle_timeout=config.http_idle_timeout,
                                        max_per_address=config.http_max_connections_per_address,
                                        allowed_networks=config.federation_allowed_networks, mdns=config.mdns))
    from matrix_core.federation.service import FederationService  # after the listener: rooms over federation
    frontends.append(FederationService(hs))
    from frontends.coap.server import CoapFrontend
    frontends.append(CoapFrontend(hs, config.bind, config.coap_port,
                                  config.coaps_port if config.coaps_enabled else None, data_dir / DATABASE_FILE,
                                  config.coap_max_observations_per_client, config.coap_max_observations))
    from frontends.mqtt.settings import build_frontend as mqtt_frontend  # the MQTT broker (frontends/mqtt)
    frontends += mqtt_frontend(config, hs, data_dir)
    return frontends


def inject_hub_ops(hs: Homeserver, data_dir: Path, config_file: Path) -> None:
    """What the admin pages need of the front ends and gateway/ (matrix_core/service/hub_ops.py):
    the MQTT rule filter check, the backup archive and the coaps key maker (the broker sets its
    topic tree itself; Gateway.start sets the listeners once they run)."""
    from frontends.coap.psk import add_device_psk
    from frontends.mqtt.topics import is_valid_rule_filter

    from .ops.backup import stream_backup

    hs.hub_ops.valid_rule_filter = is_valid_rule_filter
    hs.hub_ops.write_backup = functools.partial(stream_backup, data_dir, config_file)
    hs.hub_ops.make_psk = add_device_psk


class Gateway:
    """The running hub: the homeserver core and the listeners in front of it."""

    def __init__(self, config: GatewayConfig, data_dir: Path, config_file: Path | None = None) -> None:
        self.config = config
        self.data_dir = data_dir
        self.hs = Homeserver(settings_for(config, data_dir))
        inject_hub_ops(self.hs, data_dir, config_file or data_dir / CONFIG_FILE)
        self._http: HttpListener | None = None
        self.http_port: int | None = None
        self.frontends: list[Frontend] = []

    async def start(self) -> None:
        await self.hs.start()
        self._http = HttpListener(make_app(self.hs), self.config.bind, self.config.http_port,
                                  self.config.http_idle_timeout, self.config.http_max_connections_per_address)
        self.http_port = await self._http.start()
        for frontend in build_frontends(self.config, self.data_dir, self.hs):
            try:
                await frontend.start()
            except BaseException:
                # Half started (CoAP bound, coaps not): close what it opened, or its socket stays
                # bound and a port-in-use report would name the hub's own port too.
                try:
                    await frontend.stop()
                except Exception:
                    log.debug("stopping %s after its failed start failed too", frontend.name, exc_info=True)
                raise
            self.frontends.append(frontend)
        self._tell_listeners()

    def _tell_listeners(self) -> None:
        """The ports that are on, for the Devices page's settings and snippets (service/hub_ops.py)."""
        from matrix_core.device_setup import Listeners
        coaps = any(getattr(f, "coaps_listening", False) for f in self.frontends)
        self.hs.hub_ops.listeners = Listeners(
            http_port=self.http_port, mqtt_port=self.config.mqtt_port if self.config.mqtt_enabled else None,
            coap_port=self.config.coap_port, coaps_port=self.config.coaps_port if coaps else None)

    def describe(self) -> str:
        items = [f"http=http://{self.config.bind}:{self.http_port}"]
        items += [d for d in (frontend.describe() for frontend in self.frontends) if d]
        return " ".join(items)

    async def stop(self) -> None:
        """Stop accepting everywhere, release long-polls, finish in-flight work, close the store."""
        self.hs.db.stop_delaying()
        self.hs.stream.close()
        for frontend in reversed(self.frontends):
            try:
                await frontend.stop()
            except Exception:
                log.exception("stopping %s failed", frontend.name)
        if self._http is not None:
            await self._http.stop()
        await self.hs.stop()


async def serve(config: GatewayConfig, data_dir: Path, config_file: Path | None = None) -> int:
    started = time.monotonic()
    install_loop_exception_handler(asyncio.get_running_loop())
    gateway = Gateway(config, data_dir, config_file)
    appliance = Appliance(config, data_dir, gateway)  # systemd notify, status address, retention, mDNS
    try:
        await gateway.start()
        appliance.record_address()
    except Exception as exc:
        # Close what started (the database's reader thread would keep a dead hub's process alive).
        try:
            await gateway.stop()
        except Exception:
            log.debug("stopping after a failed start failed too", exc_info=True)
        if disk_full_at_start(data_dir, exc):
            return EXIT_DISK_FULL
        from frontends.mqtt.uplink import UplinkError

        if isinstance(exc, OSError) and exc.errno in BIND_ERRNOS:  # a port taken: one line, no traceback
            from frontends.coap.server import dtls_available

            for _ in range(3):  # datagram transports close their sockets on the next loop turns
                await asyncio.sleep(0)
            print(explain_bind_failure(config, exc, dtls_available()), file=sys.stderr, flush=True)
            return 2
        if isinstance(exc, UplinkError):  # a [[mqtt_bridge]] naming an account that does not exist
            print(f"matrix-gateway: {exc}", file=sys.stderr, flush=True)
            return 2
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Start-up leaves freed temporaries in the heap: hand them back before saying ready (a few
    # milliseconds), and again after each busy spell.
    from .memory import SettleWhenQuiet, settle_memory

    await arm_first_run(gateway)  # before the ready line: whoever waits for it finds the code logged
    settle_memory()
    print(
        f"matrix-gateway ready in {time.monotonic() - started:.2f}s: server_name={config.server_name} "
        f"{gateway.describe()} data_dir={data_dir}",
        flush=True,
    )
    appliance.start()
    settler = SettleWhenQuiet(loop, lambda: gateway.hs.db.writes_committed, settle_memory)
    await stop.wait()
    settler.cancel()
    await appliance.stop()
    log.info("shutting down")
    await gateway.stop()
    print("matrix-gateway stopped", flush=True)
    return 0


async def arm_first_run(gateway: Gateway) -> None:
    """No admin yet: arm the setup code (gateway/setup_code.py) and say where to enter it, once on
    the console and once in the log. An admin already there (install.sh, `user add --admin`): nothing."""
    from . import setup_code
    from matrix_core.setup_rules import digest

    data_dir = gateway.data_dir
    if await gateway.hs.accounts.admin_user_ids():
        setup_code.remove_code(data_dir)
        return
    code = setup_code.load_or_create_code(data_dir)
    gateway.hs.setup.arm(digest(code), lambda: setup_code.remove_code(data_dir))
    line = setup_code.instructions(setup_code.page_address(gateway.config.bind, gateway.http_port), code)
    print(line, flush=True)
    log.warning("%s", line)


def run(config: GatewayConfig, data_dir: Path, config_file: Path | None = None) -> int:
    from .memory import tune_malloc

    tune_malloc()
    raise_open_files_limit()
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(config, data_dir, config_file))
