"""The CoAP front end: aiocoap in, the client-server route table through, CBOR out.

I/O lives here and only here; what a request means is decided by the pure modules
(``translate``: path/query/token, ``content``: bodies, ``codes``: response codes) and by the one
route table every transport shares. coaps (DTLS-PSK) is a second aiocoap context serving the
same resource; its library is imported only when that listener starts.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import aiocoap
from aiocoap import error as coap_error
from aiocoap import resource
from aiocoap.blockwise import Block1Spool, Block2Cache, ContinueException, IncompleteException
from aiocoap.blockwise import _extract_block_key  # pinned aiocoap: the key its Block2 cache uses
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.util import hostportsplit

from matrix_core import errors
from matrix_core.client_api.request import ApiRequest, ApiResponse
from matrix_core.client_api.routes import ROUTER
from matrix_core.service.accounts import TokensRevoked

from . import codes, fast_lane, message_layer, stale_refusal
from .message_layer import bad_input
from .content import MAX_BODY_BYTES, decode_body, decode_plain_body, encode_body, response_format
from .notify_window import NotifyWindow
from .observe import MAX_PER_CLIENT, MAX_TOTAL, Observation, Observations, observable, token_position, with_query
from .psk import PskClaim, PskStore
from .short_paths import ACCESS_TOKEN_OPTION
from .translate import ApiCall, translate

if TYPE_CHECKING:
    from matrix_core.homeserver import Homeserver

log = logging.getLogger(__name__)


class _TooLarge(coap_error.RenderableError):
    """A Block1 upload growing past the body limit: refused before it is all buffered."""

    def __init__(self, content_format: int) -> None:
        self.content_format = content_format

    def to_message(self) -> aiocoap.Message:
        err = errors.too_large(f"Request body over {MAX_BODY_BYTES} bytes")
        return error_message(err, self.content_format)


class _BlockError(coap_error.RenderableError):
    """A Block1 upload that cannot be assembled: 4.08 or 4.00 with a CBOR diagnostic, one log line
    a minute (aiocoap's spool lets a gap or overlap escape as ValueError: 5.00 and a traceback)."""

    def __init__(self, code: int, reason: str, content_format: int) -> None:
        self.code = code
        self.reason = reason
        self.content_format = content_format

    def to_message(self) -> aiocoap.Message:
        body = {"errcode": "M_INVALID_PARAM", "error": self.reason}
        return aiocoap.Message(code=Code(self.code), payload=encode_body(body, self.content_format),
                               content_format=self.content_format)


class _Block1Spool(Block1Spool):
    """aiocoap's Block1 assembly with every way it can fail answered as a client error."""

    def feed_and_take(self, req: aiocoap.Message) -> aiocoap.Message:
        block1 = req.opt.block1
        if block1 is not None and block1.size_exponent == 7:  # BERT is for CoAP over TCP only
            raise self._refuse(req, codes.BAD_REQUEST, "Block1 size exponent 7 is reserved over UDP")
        try:
            return super().feed_and_take(req)
        except ContinueException:
            raise
        except (IncompleteException, ValueError):
            raise self._refuse(req, codes.REQUEST_ENTITY_INCOMPLETE, "Block1 block does not follow the "
                               "blocks received (RFC 7959 §2.3): start again from block 0") from None
        except coap_error.BadRequest:
            raise self._refuse(req, codes.BAD_REQUEST, "Block1 payload size does not match its block "
                               "size") from None

    @staticmethod
    def _refuse(req: aiocoap.Message, code: int, reason: str) -> _BlockError:
        bad_input.log(log, logging.WARNING, "coap-blockwise", "CoAP: a block-wise request from %s answered %s: %s",
                      getattr(req.remote, "hostinfo", req.remote), codes.code_text(code), reason)
        return _BlockError(code, reason, _format_or_cbor(req))


class _Block2Cache(Block2Cache):
    """aiocoap's Block2 cache; a block asked for that is not there (expired, or never was) is a
    4.08 with a CBOR diagnostic rather than an empty one."""

    async def extract_or_insert(self, req: aiocoap.Message, response_builder: Any) -> aiocoap.Message:
        try:
            return await super().extract_or_insert(req, response_builder)
        except IncompleteException:
            raise _Block1Spool._refuse(req, codes.REQUEST_ENTITY_INCOMPLETE, "Block2 block asked for is not "
                                       "available: ask for block 0 again") from None


class Answer(NamedTuple):
    """A CoAP answer without aiocoap: what the hub's own message layer puts on the wire."""

    code: int
    payload: bytes
    content_format: int
    max_age: int | None = None  # RFC 8516: seconds until a 4.29 (or a 5.03) may be retried
    size1: int | None = None  # 4.13: the largest body accepted


def answer_of(response: ApiResponse, method: str, content_format: int) -> Answer:
    """An API answer as CoAP code, payload and options (the one mapping of statuses is codes.py)."""
    if response.status == 200:
        code = codes.success_code(method)
    elif response.status == 201:  # a new resource (a device's picture: its event id and mxc URL)
        code = codes.CREATED
    else:
        code = codes.error_code(response.status)
    max_age = size1 = None
    if response.status in (429, 507) and isinstance(response.body, dict):  # 5.03: RFC 7252 §5.9.3.4
        retry_ms = response.body.get("retry_after_ms")
        if isinstance(retry_ms, int):
            max_age = max(1, math.ceil(retry_ms / 1000))
    if response.status == 413:
        size1 = MAX_BODY_BYTES
    return Answer(code, encode_body(response.body, content_format), content_format, max_age, size1)


def message_of(answer: Answer) -> aiocoap.Message:
    msg = aiocoap.Message(code=Code(answer.code), payload=answer.payload, content_format=answer.content_format)
    if answer.max_age is not None:
        msg.opt.max_age = answer.max_age
    if answer.size1 is not None:
        msg.opt.size1 = answer.size1
    return msg


def to_message(response: ApiResponse, method: str, content_format: int) -> aiocoap.Message:
    """An API answer as an aiocoap response."""
    return message_of(answer_of(response, method, content_format))


def error_message(err: errors.MatrixError, content_format: int = codes.CONTENT_FORMAT_CBOR) -> aiocoap.Message:
    return to_message(ApiResponse(err.status, err.to_json()), "GET", content_format)


class ApiResource(resource.ObservableResource, resource.PathCapable):
    """The whole CoAP URI space: every request goes to the client-server route table."""

    def __init__(self, hs: "Homeserver", max_observations_per_client: int = MAX_PER_CLIENT,
                 max_observations: int = MAX_TOTAL) -> None:
        super().__init__()
        self._block1 = _Block1Spool()
        self._block2 = _Block2Cache()
        self.hs = hs
        self.observations = Observations(hs.rooms.joined_room_ids, max_observations_per_client, max_observations,
                                         authenticate=hs.accounts.authenticate)
        self.window = NotifyWindow()
        self._observe_requests: dict[int, Any] = {}
        self._observation_removers: dict[int, Any] = {}
        #: notification answers encoded once per batch, by (id(response), content format)
        self._encoded: dict[tuple[int, int], tuple[ApiResponse, Answer]] = {}
        self._encoded_generation = -1

    def get_link_description(self) -> None:
        return None

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        block1 = request.opt.block1
        if block1 is not None and block1.start + len(request.payload) > MAX_BODY_BYTES:
            raise _TooLarge(_format_or_cbor(request))
        return True

    async def add_observation(self, request: aiocoap.Message, serverobservation: Any) -> None:
        # aiocoap wants every observation accepted here (it calls the callback in any case);
        # render() deregisters it early when the call is not observable or fails.
        self._observe_requests[id(request)] = serverobservation
        serverobservation.accept(lambda: self._end_observation(serverobservation))

    def end_revoked(self, revoked: TokensRevoked) -> None:
        """A logout ends the observations made with its tokens now (accounts.TokensRevoked)."""
        final = ApiResponse(401, errors.unknown_token().to_json())
        self.observations.end_where(lambda obs: obs.call.access_token in revoked.tokens, final)

    def _end_observation(self, serverobservation: Any) -> None:
        remove = self._observation_removers.pop(id(serverobservation), None)
        if remove is not None:
            remove()

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        servobs = self._observe_requests.pop(id(request), None)
        if servobs is None:
            token_opts = request.opt.get_option(ACCESS_TOKEN_OPTION)
            return message_of(await self.answer(
                int(request.code), request.opt.uri_path, request.opt.uri_query,
                token_opts[-1].value if token_opts else None, _int_or_none(request.opt.accept),
                _int_or_none(request.opt.content_format), request.payload, request.remote,
                client_address(request.remote)))
        content_format = codes.CONTENT_FORMAT_CBOR
        method = "GET"
        try:
            content_format = response_format(_int_or_none(request.opt.accept))
            token_opts = request.opt.get_option(ACCESS_TOKEN_OPTION)
            call = translate(int(request.code), request.opt.uri_path, request.opt.uri_query,
                             token_opts[-1].value if token_opts else None)
            method = call.method
            if call.access_token is None:
                call = await self._with_psk_token(call, request.remote)
            observing = observable(call)
            if observing and call.segments == ["sync"]:
                call = with_query(call, timeout="0")  # the first answer comes now; changes follow
            position = self.hs.stream.position
            cf = _int_or_none(request.opt.content_format)
            payload = request.payload
            response = await self.dispatch(call, lambda: decode_body(payload, cf), client_address(request.remote),
                                           lambda: decode_plain_body(payload, cf))
            if observing and response.status == 200:
                if not await self._observe(servobs, request, call, response, position, content_format):
                    servobs.deregister()  # the hub holds all it may: a plain answer (RFC 7641 §4.1)
                return self._first_block(request, to_message(response, method, content_format))
            servobs.deregister()  # not observable: a plain answer, no Observe option
        except errors.MatrixError as err:
            servobs.deregister()
            response = ApiResponse(err.status, err.to_json())
        except Exception:
            log.exception("unhandled error on a CoAP %s", request.code)
            response = ApiResponse(500, {"errcode": "M_UNKNOWN", "error": "Internal server error"})
            servobs.deregister()
        return to_message(response, method, content_format)

    async def answer(self, method_code: int, uri_path: Any, uri_query: Any, token_option: bytes | None,
                     accept: int | None, content_format: int | None, payload: bytes,
                     remote: Any = None, client: str = "coap") -> Answer:
        """A request that is not an observation, from its fields: every error is an answer.

        The hub's message layer calls this for its hot path (remote None: plain UDP has no
        DTLS identity); render() for everything else aiocoap delivers. `client` is the device's
        IP address (login throttling is per address).
        """
        response_cf = codes.CONTENT_FORMAT_CBOR
        method = "GET"
        try:
            response_cf = response_format(accept)
            call = translate(method_code, uri_path, uri_query, token_option)
            method = call.method
            if call.access_token is None and remote is not None:
                call = await self._with_psk_token(call, remote)
            response = await self.dispatch(call, lambda: decode_body(payload, content_format), client,
                                           lambda: decode_plain_body(payload, content_format),
                                           raw_body=payload, content_format=content_format)
        except errors.MatrixError as err:
            response = ApiResponse(err.status, err.to_json())
        except Exception:
            log.exception("unhandled error on a CoAP %s", method_code)
            response = ApiResponse(500, {"errcode": "M_UNKNOWN", "error": "Internal server error"})
        return answer_of(response, method, response_cf)

    def _first_block(self, request: aiocoap.Message, msg: aiocoap.Message) -> aiocoap.Message:
        """Block2 for observe answers, which aiocoap sends whole (RFC 7959 §2.6).

        The whole answer goes into the resource's Block2 cache under the request's block key
        (which ignores Observe), so the device's follow-up GETs for blocks 1.. get the rest of
        *this* answer rather than a fresh one.
        """
        remote = request.remote
        limit = remote.maximum_payload_size
        block2 = request.opt.block2
        size_exp = block2.size_exponent if block2 is not None else remote.maximum_block_size_exp
        if len(msg.payload) <= min(limit, 2 ** (size_exp + 4)):
            return msg
        self._block2._completes[_extract_block_key(request)] = msg
        return msg._extract_block(0, size_exp, limit)

    async def dispatch(self, call: ApiCall, load_body: Any = lambda: None, client: str = "coap",
                       load_plain_body: Any = None, raw_body: bytes = b"",
                       content_format: int | None = None) -> ApiResponse:
        """Run one API call through the shared route table; Matrix errors become answers.
        `load_plain_body`: the body as plain JSON (account data, tags; content.decode_plain_body).
        `raw_body`, `content_format`: the body as bytes, for routes that take bytes (a picture)."""
        api_request = ApiRequest(method=call.method, segments=list(call.segments), query=call.query,
                                 access_token=call.access_token, remote=client, load_body=load_body,
                                 transport="coap", load_plain_body=load_plain_body, raw_body=raw_body,
                                 content_type=codes.MEDIA_TYPES.get(content_format) if content_format is not None
                                 else None)
        try:
            return await ROUTER.dispatch(self.hs, api_request)
        except errors.MatrixError as err:
            return ApiResponse(err.status, err.to_json())

    async def _with_psk_token(self, call: ApiCall, remote: Any) -> ApiCall:
        """Over coaps without a token, the device's PSK identity names its Matrix device."""
        claims = getattr(remote, "authenticated_claims", None) or []
        claim = next((c for c in claims if isinstance(c, PskClaim)), None)
        if claim is None:
            return call
        token = await self.hs.accounts.device_token(claim.user_id, claim.device_id)
        return ApiCall(call.method, call.full_path, call.segments, call.query, token)

    async def _observe(self, servobs: Any, request: aiocoap.Message, call: ApiCall, first: ApiResponse,
                       position: int, content_format: int) -> bool:
        """Register the observation; False when the hub holds all it may (the caps, observe.py)."""
        requester = await self.hs.accounts.authenticate(call.access_token)
        room_id = None
        if call.segments[0] == "rooms":
            room_id = await self.hs.rooms.resolve_room(call.segments[1])
        else:
            position = token_position(first.body.get("next_batch"), position)

        def notify(response: ApiResponse, evicted: bool = False) -> None:
            message = self._first_block(request, message_of(self._encode(response, content_format)))
            if evicted:  # its client has moved on: no retransmissions, nothing queued behind others
                message.mtype = Type.NON
                bad_input.log(log, logging.WARNING, "coap-observe-evicted", "CoAP: %s holds %d observations, the most a client may: "
                              "its oldest ended", getattr(request.remote, "hostinfo", request.remote),
                              self.observations.max_per_client)
            servobs.trigger(message, is_last=response.status != 200)

        remote = request.remote
        observation = Observation(call, requester.user_id, room_id, position, self.dispatch, notify,
                                  endpoint=remote, ready=lambda: self.window.wait_clear(remote))
        remove = self.observations.add(observation)
        if remove is None:
            bad_input.log(log, logging.WARNING, "coap-observe-full", "CoAP: the hub holds %d observations, the most it may: a new "
                          "one was answered without Observe", self.observations.max_total)
            return False
        self._observation_removers[id(servobs)] = remove
        if self.hs.stream.position > position:  # events committed while the first answer was built
            observation.poke(self.hs.stream.position)
        return True

    def _encode(self, response: ApiResponse, content_format: int) -> Answer:
        """A notification's answer, encoded once for every observer it is shared with."""
        generation = self.observations.generation
        if generation != self._encoded_generation:
            self._encoded, self._encoded_generation = {}, generation
        key = (id(response), content_format)
        hit = self._encoded.get(key)
        if hit is not None and hit[0] is response:
            return hit[1]
        answer = answer_of(response, "GET", content_format)
        self._encoded[key] = (response, answer)
        return answer


def client_address(remote: Any) -> str:
    """The IP address a CoAP request came from (plain UDP or DTLS), for per-address throttling."""
    try:
        return hostportsplit(remote.hostinfo)[0]
    except Exception:  # an address kind without a host: one shared key rather than no answer
        return "coap"


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _format_or_cbor(request: aiocoap.Message) -> int:
    try:
        return response_format(_int_or_none(request.opt.accept))
    except errors.MatrixError:
        return codes.CONTENT_FORMAT_CBOR


#: aiocoap's lines that a stranger's datagrams can trigger one each: at most one a minute
_AIOCOAP_NOISE = (("Ignoring unparsable message", "coap-unparsable"),
                  ("Render request raised a renderable error", "coap-renderable-error"))


def quiet_aiocoap_logs(logger_name: str) -> None:
    """Rate-limit aiocoap's per-datagram log lines on its server logger (issue 20, R3)."""
    logger = logging.getLogger(logger_name)
    if any(getattr(f, "coap_rate_limit", False) for f in logger.filters):
        return
    for prefix, kind in _AIOCOAP_NOISE:
        limit = bad_input.filter(prefix, kind)
        limit.coap_rate_limit = True  # type: ignore[attr-defined]
        logger.addFilter(limit)


def dtls_available() -> bool:
    """Whether the DTLS library coaps needs (DTLSSocket, aiocoap's tinydtls) is installed."""
    try:
        import DTLSSocket  # noqa: F401
    except ImportError:
        return False
    return True


class CoapFrontend:
    """The CoAP (UDP) listener and, when enabled, the coaps (DTLS-PSK) one: a gateway Frontend."""

    name = "coap"

    def __init__(self, hs: "Homeserver", bind: str, port: int, coaps_port: int | None, database_path: Path,
                 max_observations_per_client: int = MAX_PER_CLIENT, max_observations: int = MAX_TOTAL) -> None:
        self.hs = hs
        self.bind = bind
        self.port = port
        self.coaps_port = coaps_port
        self.database_path = database_path
        self.site = ApiResource(hs, max_observations_per_client, max_observations)
        self._contexts: list[Any] = []
        self._unsubscribe: Any = None
        self._unlisten_revoked: Any = None
        self._psk_store: PskStore | None = None
        self._coaps_running = False
        self._message_layers: list[Any] = []

    async def start(self) -> None:
        quiet_aiocoap_logs("coap-server")
        self._unsubscribe = self.hs.stream.subscribe(self.site.observations.on_events)
        self._unlisten_revoked = self.hs.accounts.on_revoked(self.site.end_revoked)
        context = await aiocoap.Context.create_server_context(
            self.site, bind=(self.bind, self.port), transports=["udp6"], loggername="coap-server")
        stale_refusal.guard(context)
        self.site.window.install(context)
        fast_lane.install(context, self.site)
        self._message_layers = message_layer.install(context, self.site)
        self._contexts.append(context)
        if self.coaps_port is not None:
            await self._start_coaps()

    async def _start_coaps(self) -> None:
        if not dtls_available():
            # coaps is an optional extra: without its library the hub runs CoAP only, as configured
            # by default, and says so once, plainly (not a warning: nothing is wrong).
            log.info("coaps (CoAP over DTLS) is off: its library is not installed; to turn it on: "
                     "pip install 'matrix-gateway[coaps]' (builds with autoconf, automake, libtool)")
            return
        if self.bind in ("::", "0.0.0.0", ""):
            log.error("coaps disabled: aiocoap's DTLS server needs one address to bind to, not %r", self.bind)
            return
        self._psk_store = PskStore(self.database_path)
        quiet_aiocoap_logs("coaps-server")
        # aiocoap's DTLS server binds to the given port + 1 (5683 -> 5684): hand it one less.
        context = await aiocoap.Context.create_server_context(
            self.site, bind=(self.bind, (self.coaps_port or 0) - 1), transports=["tinydtls_server"],
            server_credentials=self._psk_store.credentials(), loggername="coaps-server")
        self.site.window.install(context)
        self._contexts.append(context)
        self._coaps_running = True

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._unlisten_revoked is not None:
            self._unlisten_revoked()
        self.site.observations.close()
        self.site.window.close()
        for layer in self._message_layers:
            await layer.close()
        for context in reversed(self._contexts):
            await context.shutdown()
        self._contexts.clear()
        if self._psk_store is not None:
            self._psk_store.close()

    @property
    def coaps_listening(self) -> bool:
        """Whether the coaps listener runs (it is off without the DTLS library)."""
        return self._coaps_running

    def describe(self) -> str:
        text = f"coap=coap://{self.bind}:{self.port}"
        if self._coaps_running:
            text += f" coaps=coaps://{self.bind}:{self.coaps_port}"
        return text
