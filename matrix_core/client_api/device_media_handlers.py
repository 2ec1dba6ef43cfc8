"""A device's picture in one request (issue 15, "Devices"): the bytes go to the media repository
(`hs.media`), then an `m.image` event refers to them, so Element shows the picture.

    POST /_matrix/client/{version}/rooms/{roomId}/org.matrix_gateway.image[?filename=NAME]
    body: the JPEG/PNG/GIF bytes (HTTP Content-Type image/...; CoAP Content-Format 22/23/24, or
    none: the magic bytes tell JPEG and PNG)
    -> 201 {"event_id": ..., "content_uri": "mxc://..."}   (CoAP 2.01)

A camera on CoAP sends it block-wise to the short path `/_m/c/v3/r/ROOM/img?a=TOKEN`
(docs/coap-short-paths.md). A hub-specific route (namespaced, unstable): the spec's way is two
requests (upload, then send), too much for a sensor. The membership is checked before anything
is stored; bodies over the transport's limit are refused before (413 / CoAP 4.13).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..device_media import clean_mimetype, filename_for, image_content, image_type

from .. import errors, params
from .request import ApiRequest, ApiResponse

if TYPE_CHECKING:
    from ..homeserver import Homeserver

MAX_FILENAME = 255


async def post_image(hs: "Homeserver", req: ApiRequest) -> ApiResponse:
    requester = await hs.accounts.authenticate(req.access_token)
    room_id = await hs.rooms.resolve_room(params.room_id_or_alias(req.params["roomId"]))
    data = req.raw_body
    if not data:
        raise errors.invalid_param("The body must be the picture's bytes")
    declared = clean_mimetype(req.content_type)
    sniffed = declared is None or declared == "application/octet-stream"
    mimetype = image_type(data, None if sniffed else declared, sniff=sniffed)
    if mimetype is None:
        raise errors.MatrixError(415, "M_UNKNOWN", "Not a picture: send image/* (CoAP Content-Format 22, 23 "
                                 "or 24), or JPEG/PNG bytes")
    if not hs.rooms.is_joined(requester.user_id, room_id):
        raise errors.forbidden("You are not joined to this room")
    filename = req.arg("filename") or filename_for("image", mimetype)
    if len(filename) > MAX_FILENAME or "/" in filename or not filename.isprintable():
        raise errors.invalid_param("filename: at most 255 printable characters, no '/'")
    url = await hs.media.store_bytes(requester.user_id, data, mimetype, filename)
    event_id = await hs.rooms.send_event(requester, room_id, "m.room.message",
                                         image_content(filename, url, mimetype, data))
    return ApiResponse(201, {"event_id": event_id, "content_uri": url})
