"""The Homeserver: one object holding the store, the event stream and the services.

Every front end (HTTP, CoAP, MQTT, federation) gets this object and calls its services; none of
them touches SQL or builds events by hand.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .identifiers import server_of
from .ephemeral import Receipt
from .notifier import EventStream
from .appservice_rules import Registration
from .push_gateway import RetryPolicy
from .ratelimit import LoginLimits, LoginThrottle, RateLimit, RateLimiter
from .service.account_data import AccountData
from .service.accounts import Accounts
from .service.deactivation import Deactivation
from .service.setup import FirstRunSetup
from .service.appservice import AppServices
from .service.cross_signing import CrossSigning
from .service.devices import Devices
from .service.directory import Directory
from .service.e2e_keys import E2eKeys
from .service.forgotten_rooms import ForgottenRooms
from .service.admin import HubAdmin
from .service.hub_ops import HubOps
from .service.hub_status import HubStatus
from .service.key_backup import KeyBackup
from .service.media import Media
from .service.presence import Presence
from .service.push import PushRules
from .service.push_delivery import PushDelivery
from .service.receipts import Receipts
from .service.rooms import Rooms
from .service.series import Series
from .service.sliding_sync import SlidingSync
from .service.sync import Sync
from .service.to_device import ToDevice
from .service.typing import Typing
from .service.uia import UserInteractiveAuth
from .signing import SigningKey
from .store import Database

if TYPE_CHECKING:  # the federation front end's parts (federation imports the core, not the reverse)
    from .federation.client import FederationClient
    from .federation.e2e import E2eFederation
    from .federation.inbound import InboundEvents
    from .federation.keyring import KeyRing
    from .federation.sender import FederationSender
    from .federation.server import FederationRoutes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HomeserverSettings:
    server_name: str
    database_path: Path
    signing_key: SigningKey
    enable_registration: bool = False
    # "FULL": every commit is fsynced before anything is acknowledged (the durability promise).
    sqlite_synchronous: str = "FULL"
    commit_window_ms: int = 0
    message_rate: RateLimit = field(default_factory=lambda: RateLimit(per_second=50.0, burst=200))
    login_limits: LoginLimits = field(default_factory=LoginLimits)
    max_rooms_per_user: int = 1000  # rooms an account may create (0: no limit; admins exempt)
    admin_contact: str = ""  # named in M_RESOURCE_LIMIT_EXCEEDED answers
    presence_enabled: bool = True  # off: presence PUTs are ignored, GETs answer offline (service/presence.py)
    # Discovery and VoIP (client_api/discovery_handlers.py): the base URL clients should use
    # ("": the URL the request came in on), TURN servers and the TURN REST API shared secret.
    public_base_url: str = ""
    turn_uris: tuple[str, ...] = ()
    turn_shared_secret: str = ""
    turn_user_lifetime_s: int = 86400
    # Delivery to push gateways: retry window (config push_give_up_after_s), timeouts, bounds.
    push_retry: RetryPolicy = field(default_factory=RetryPolicy)
    # The content repository (service/media.py): files in database_path's dir under media/.
    max_upload_bytes: int = 50 << 20
    media_quota_per_user_bytes: int = 0  # 0: no quota
    media_quota_total_bytes: int = 0
    # Application services (bridges, bots): checked registrations (gateway/appservices.py reads them).
    appservices: tuple[Registration, ...] = ()


class Homeserver:
    # The federation front end's parts, set at its start-up (federation/server.py sets the client,
    # keyring and routes, federation/service.py the inbound handler and sender). Only federation
    # code reads them, and it runs only after that start-up; without federation they do not exist
    # (hence annotated here, not assigned None in __init__: a reader need not test for None).
    federation_client: FederationClient
    keyring: KeyRing
    federation_inbound: InboundEvents
    federation_sender: FederationSender
    federation_routes: FederationRoutes
    e2e_federation: E2eFederation

    def __init__(self, settings: HomeserverSettings) -> None:
        self.settings = settings
        self.server_name = settings.server_name
        self.signing_key = settings.signing_key
        self.db = Database(settings.database_path, settings.sqlite_synchronous, settings.commit_window_ms / 1000)
        self.db.admin_contact = settings.admin_contact
        self.stream = EventStream()
        self.accounts = Accounts(self.db, self.server_name, LoginThrottle(settings.login_limits))
        # The per-user message rate: the rooms service applies it to every front end's sends.
        self.message_limiter = RateLimiter(settings.message_rate)
        self.rooms = Rooms(self.db, self.stream, self.server_name, self.signing_key,
                           max_rooms_per_user=settings.max_rooms_per_user, admin_contact=settings.admin_contact,
                           limiter=self.message_limiter)
        self.sync = Sync(self.rooms, self.stream)
        # Account data, presence, forgotten rooms, the user directory (issue 13); the first two
        # register their /sync sources.
        self.account_data = AccountData(self.db, self.sync)
        self.presence = Presence(self.rooms, self.sync, settings.presence_enabled)
        self.forgotten_rooms = ForgottenRooms(self.db, self.rooms)
        self.directory = Directory(self.db, self.rooms)
        # Ephemeral events (issue 13): typing in memory, receipts persisted; both /sync sources.
        self.typing = Typing(self.rooms, self.server_name, self.sync.notify)
        # The read marker (m.fully_read) is room account data, kept by hs.account_data.
        self.receipts = Receipts(self.db, self.rooms, self.server_name, self.sync.notify,
                                 self.account_data)
        self.sync.add_source(self.typing.sync_source)
        self.sync.add_source(self.receipts.sync_source)
        self.devices = Devices(self.db, self.accounts)  # device management; last-seen bookkeeping
        self.uia = UserInteractiveAuth(self.accounts)
        # Push rules and notification counts, from the read positions of the user's receipts.
        self.push = PushRules(self.db, self.rooms, self.stream, self.sync.notify, lambda: self.receipts)
        self.sync.add_source(self.push.source)
        # Our users' receipts move their counts: push's read hint shows the room with its new counts
        # in /sync (unread_notifications) and sliding sync even when the receipt itself is not shown.
        def reads(kept: list[Receipt]) -> None:
            for r in kept:
                if server_of(r.user_id) == self.server_name:
                    self.push.note_read(r.user_id, r.room_id)
        self.receipts.listeners.append(reads)
        self.push_delivery = PushDelivery(self, settings.push_retry)  # pushers, notify to gateways
        # Cross-signing keys and signatures (issue 14): read by keys/query, changes to device lists.
        self.cross_signing = CrossSigning(self.db)
        self.key_backup = KeyBackup(self.db)  # server-side key backup (/room_keys)
        self.media = Media(self.db, self.server_name, settings.database_path.parent / "media", settings.max_upload_bytes,
                           settings.media_quota_per_user_bytes, settings.media_quota_total_bytes, settings.admin_contact)
        # End-to-end encryption, server side (issue 14): keys, device lists, to-device; /sync sources
        self.e2e_keys = E2eKeys(self)
        self.to_device = ToDevice(self)
        self.appservices = AppServices(self, settings.appservices)  # issue 17: bridges and bots
        self.series = Series(self.db, self.rooms)  # readings as time series (issue 18, the web pages' plots)
        self.status = HubStatus(self.stream, settings.database_path)  # the Status page's figures (issue 18)
        self.hub_ops = HubOps()  # what the admin pages need from front ends and gateway/, set by them
        self.admin = HubAdmin(self)  # the admin API and the Devices page (issue 18)
        self.sliding_sync = SlidingSync(self)  # Simplified Sliding Sync, MSC4186 (issue 19)
        self.deactivation = Deactivation(self)  # by the user or an admin: account gone, rooms left
        self.setup = FirstRunSetup(self.accounts)  # first run: the setup code makes the first admin (issue 18)

    async def start(self) -> None:
        await self.db.open()
        await self.rooms.load()
        await self.account_data.load()
        await self.forgotten_rooms.load()
        await self.receipts.load()
        await self.push.load()
        await self.push_delivery.start()
        await self.media.start()
        await self.e2e_keys.load()
        await self.to_device.load()
        await self.appservices.start()
        self.status.start()

    async def stop(self) -> None:
        """Commit everything in flight, wake long-polls, close the database."""
        self.stream.close()
        self.status.stop()
        self.typing.stop()
        await self.receipts.stop()
        await self.push_delivery.stop()
        await self.e2e_keys.stop()
        await self.to_device.stop()
        await self.appservices.stop()
        await self.rooms.compactor.stop()
        await self.devices.flush()
        await self.db.close()
