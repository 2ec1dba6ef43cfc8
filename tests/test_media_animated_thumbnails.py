"""Animated thumbnails (spec v1.11 `animated` on `GET /_matrix/client/v1/media/thumbnail`, MSC2705, issue 15):
an animated GIF, WebP or APNG asked for with `animated=true` gives an animation of the same format, every
frame scaled or cropped alike; `animated=false` or no `animated` the static first frame; a bad value
M_INVALID_PARAM; over the frame cap the static one. Raw HTTP (urllib) against the CLI-started hub, Pillow
reads what comes back."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from matrix_core import media_rules
from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess
from tests.test_media_http import AUTH, call, media_files, media_path, upload

FRAMES = 4
DURATIONS = [50, 60, 70, 80]


def animation(fmt: str, frames: int = FRAMES, size: tuple[int, int] = (120, 80)) -> bytes:
    """An animation whose frames all differ (encoders merge identical neighbours)."""
    images = [Image.new("RGBA", size, ((60 * i) % 256, (200 - 40 * i) % 256, (7 * i) % 256, 255))
              for i in range(frames)]
    buf = io.BytesIO()
    durations = [DURATIONS[i % len(DURATIONS)] for i in range(frames)]
    images[0].save(buf, fmt, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return buf.getvalue()


@pytest.fixture(scope="module")
def alice(gateway: GatewayProcess) -> str:
    return gateway.login("alice", PASSWORD)


def thumbnail(gw: GatewayProcess, token: str, mxc: str, query: str) -> tuple[int, dict[str, str], bytes]:
    return call(gw, "GET", f"{AUTH}/thumbnail/{media_path(mxc)}?{query}", token=token)


def frame_durations(image: Image.Image) -> list[int]:
    found = []
    for index in range(image.n_frames):
        image.seek(index)
        image.load()
        found.append(int(image.info["duration"]))
    return found


@pytest.mark.parametrize("fmt,upload_type,served_type", [
    ("GIF", "image/gif", "image/gif"), ("WEBP", "image/webp", "image/webp"), ("PNG", "image/png", "image/png"),
])
def test_animated_true_gives_an_animation_of_the_same_format(gateway: GatewayProcess, alice: str, fmt: str,
                                                              upload_type: str, served_type: str) -> None:
    status, body = upload(gateway, alice, animation(fmt), upload_type)
    assert status == 200, body
    mxc = body["content_uri"]
    for method, size in (("scale", (60, 40)), ("crop", (60, 60))):
        status, headers, got = thumbnail(gateway, alice, mxc, f"width=60&height=60&method={method}&animated=true")
        assert status == 200, got[:300]
        assert headers["Content-Type"] == served_type
        assert headers["Content-Disposition"].startswith("inline")
        image = Image.open(io.BytesIO(got))
        assert image.format == fmt and image.size == size
        assert image.is_animated and image.n_frames == FRAMES
        assert frame_durations(image) == DURATIONS
        colours = set()
        for index in range(FRAMES):
            image.seek(index)
            colours.add(image.convert("RGB").getpixel((size[0] // 2, size[1] // 2)))
        assert len(colours) == FRAMES  # every frame of the source, not one repeated


@pytest.mark.parametrize("query", ["width=60&height=60&animated=false", "width=60&height=60"])
def test_animated_false_or_absent_is_static(gateway: GatewayProcess, alice: str, query: str) -> None:
    status, body = upload(gateway, alice, animation("GIF"), "image/gif")
    status, headers, got = thumbnail(gateway, alice, body["content_uri"], query)
    assert status == 200, got[:300]
    assert headers["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(got))
    assert image.size == (60, 40) and not getattr(image, "is_animated", False)


def test_animated_true_of_a_still_image_is_static(gateway: GatewayProcess, alice: str) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (120, 80), (1, 2, 3)).save(buf, "GIF")
    status, body = upload(gateway, alice, buf.getvalue(), "image/gif")
    status, headers, got = thumbnail(gateway, alice, body["content_uri"], "width=60&height=60&animated=true")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert not getattr(Image.open(io.BytesIO(got)), "is_animated", False)


def test_animated_thumbnails_are_cached_apart_from_static_ones(gateway: GatewayProcess, alice: str) -> None:
    status, body = upload(gateway, alice, animation("GIF"), "image/gif")
    mxc = body["content_uri"]
    status, _, animated = thumbnail(gateway, alice, mxc, "width=50&height=50&animated=true")
    status, _, static = thumbnail(gateway, alice, mxc, "width=50&height=50")
    assert Image.open(io.BytesIO(animated)).n_frames == FRAMES and animated != static
    files = set(media_files(gateway.data_dir))
    status, _, again = thumbnail(gateway, alice, mxc, "width=50&height=50&animated=true")
    assert status == 200 and again == animated
    status, _, again_static = thumbnail(gateway, alice, mxc, "width=50&height=50&animated=false")
    assert status == 200 and again_static == static
    assert set(media_files(gateway.data_dir)) == files  # served from the cache, nothing made again


@pytest.mark.parametrize("value", ["yes", "1", "TRUE", "", "true,false"])
def test_bad_animated_values_are_invalid_param(gateway: GatewayProcess, alice: str, value: str) -> None:
    status, body = upload(gateway, alice, animation("GIF"), "image/gif")
    files = set(media_files(gateway.data_dir))
    status, _, got = thumbnail(gateway, alice, body["content_uri"], f"width=60&height=60&animated={value}")
    assert status == 400 and json.loads(got)["errcode"] == "M_INVALID_PARAM", got[:300]
    assert set(media_files(gateway.data_dir)) == files


def test_over_the_frame_cap_the_thumbnail_is_static(gateway: GatewayProcess, alice: str) -> None:
    frames = media_rules.MAX_ANIMATED_FRAMES + 1
    status, body = upload(gateway, alice, animation("GIF", frames=frames, size=(16, 16)), "image/gif")
    assert status == 200, body
    status, headers, got = thumbnail(gateway, alice, body["content_uri"], "width=8&height=8&animated=true")
    assert status == 200, got[:300]
    assert headers["Content-Type"] == "image/png"
    assert not getattr(Image.open(io.BytesIO(got)), "is_animated", False)


@pytest.mark.parametrize("frames,source,thumb,fits", [
    (4, (120, 80), (60, 40), True),
    (1, (120, 80), (60, 40), False),  # not an animation
    (media_rules.MAX_ANIMATED_FRAMES, (16, 16), (8, 8), True),
    (media_rules.MAX_ANIMATED_FRAMES + 1, (16, 16), (8, 8), False),
    (100, (4000, 4000), (100, 100), False),  # 1.6 Gpx to decode
    (100, (800, 800), (800, 800), False),  # 64 Mpx to hold
    (100, (1000, 1000), (400, 400), True),
])
def test_animated_thumbnail_caps(frames: int, source: tuple[int, int], thumb: tuple[int, int], fits: bool) -> None:
    assert media_rules.animated_thumbnail_fits(frames, source, thumb) is fits


def test_truncated_animation_is_a_clear_400(gateway: GatewayProcess, alice: str) -> None:
    data = animation("GIF", frames=6)
    status, body = upload(gateway, alice, data[:len(data) * 3 // 4], "image/gif")
    status, _, got = thumbnail(gateway, alice, body["content_uri"], "width=30&height=30&animated=true")
    assert status == 400 and json.loads(got)["errcode"] == "M_UNKNOWN", got[:300]
    assert "Traceback" not in gateway.read_log()


def test_animated_decompression_bomb_is_refused(gateway: GatewayProcess, alice: str) -> None:
    data = bytearray(animation("GIF"))
    data[6:10] = (6000).to_bytes(2, "little") * 2  # logical screen 6000x6000: 36 Mpx a frame, in 1 kB
    status, body = upload(gateway, alice, bytes(data), "image/gif")
    rss = gateway.rss_bytes()
    status, _, got = thumbnail(gateway, alice, body["content_uri"], "width=30&height=30&animated=true")
    assert status == 400 and json.loads(got)["errcode"] == "M_UNKNOWN", got[:300]
    assert gateway.rss_bytes() < rss + (50 << 20)
