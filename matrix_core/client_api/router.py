"""Match (method, path segments) against the route table: one table for every transport."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Generic, TypeVar

from .. import errors
from .request import ApiRequest, ApiResponse

if TYPE_CHECKING:
    from ..homeserver import Homeserver

Handler = Callable[["Homeserver", ApiRequest], Awaitable[ApiResponse]]
H = TypeVar("H")  # a handler: the client API's `Handler`, or federation's


@dataclass(frozen=True, slots=True)
class Route(Generic[H]):
    method: str
    pattern: tuple[str, ...]  # literal segments, or "{name}" captures, or "{name...}" for the rest
    handler: H

    def match(self, segments: list[str]) -> dict[str, str] | None:
        params: dict[str, str] = {}
        for i, part in enumerate(self.pattern):
            if part.endswith("...}"):
                params[part[1:-4]] = "/".join(segments[i:])
                return params
            if i >= len(segments):
                return None
            if part.startswith("{"):
                params[part[1:-1]] = segments[i]
            elif part != segments[i]:
                return None
        return params if len(segments) == len(self.pattern) else None


class Router(Generic[H]):
    """Method + path segments -> (handler, path parameters); generic in the handler's type so the
    client API and federation share the matching (one router) with their own handler signatures."""

    def __init__(self) -> None:
        self.routes: list[Route[H]] = []
        # (first segment, number of segments) -> the routes that can match: a dict hit instead of
        # trying every route on each request (the send route is matched thousands of times a second).
        self._index: dict[tuple[str, int], list[Route[H]]] = {}
        self._open_ended: list[Route[H]] = []

    def add(self, method: str, path: str, handler: H) -> None:
        """Register a handler; adding the same method and path again replaces the earlier one."""
        route = Route(method.upper(), tuple(path.strip("/").split("/")), handler)
        if any(r.method == route.method and r.pattern == route.pattern for r in self.routes):
            self._remove(route.method, route.pattern)
        self.routes.append(route)
        if route.pattern[-1].endswith("...}") or route.pattern[0].startswith("{"):
            self._open_ended.append(route)
        else:
            self._index.setdefault((route.pattern[0], len(route.pattern)), []).append(route)

    def _remove(self, method: str, pattern: tuple[str, ...]) -> None:
        def keep(routes: list[Route[H]]) -> list[Route[H]]:
            return [r for r in routes if not (r.method == method and r.pattern == pattern)]

        self.routes = keep(self.routes)
        self._open_ended = keep(self._open_ended)
        self._index = {k: keep(v) for k, v in self._index.items()}

    def _candidates(self, segments: list[str]) -> list[Route[H]]:
        indexed = self._index.get((segments[0], len(segments)), []) if segments else []
        return indexed + self._open_ended if self._open_ended else indexed

    def resolve(self, method: str, segments: list[str]) -> tuple[H, dict[str, str]]:
        path_matched = False
        for route in self._candidates(segments):
            params = route.match(segments)
            if params is None:
                continue
            if route.method == method:
                return route.handler, params
            path_matched = True
        if path_matched:
            raise errors.MatrixError(405, "M_UNRECOGNIZED", f"Method {method} not allowed here")
        raise errors.unrecognized()



class ClientRouter(Router[Handler]):
    """The client-server API's route table (HTTP and CoAP dispatch through it)."""

    async def dispatch(self, hs: Homeserver, request: ApiRequest) -> ApiResponse:
        handler, params = self.resolve(request.method, request.segments)
        request.params = params
        if hs.appservices.by_token and request.access_token in hs.appservices.by_token:
            # an application service acting as one of its users (`?user_id=`), or one of their
            # devices (MSC3202's `?org.matrix.msc3202.device_id=`; service/appservice.py)
            request.access_token = hs.appservices.masquerade(
                request.access_token, request.arg("user_id"),
                request.arg("org.matrix.msc3202.device_id") or request.arg("device_id"))
        try:
            return await handler(hs, request)
        finally:
            # the device's last-seen time and address: a dict lookup, written at most every few minutes
            hs.devices.seen(request.access_token, request.remote)


CLIENT_VERSIONS = ("v3", "r0", "v1", "unstable")


def client_api_segments(segments: list[str]) -> list[str]:
    """Strip `_matrix/client/<version>` (v3, r0, the seed's api/v1, unstable) from a full path."""
    if segments[:2] != ["_matrix", "client"] or len(segments) < 3:
        raise errors.unrecognized()
    if segments[2] == "versions":
        return ["versions"]
    if segments[2:4] == ["api", "v1"]:
        return segments[4:]
    if segments[2] in CLIENT_VERSIONS:
        return segments[3:]
    raise errors.unrecognized()
