"""Uploaded bytes -> model-size pixels, with the service's limits, or an error a client can act on.

Nothing about an upload is trusted: not its file name, not its Content-Type. The bytes are
sniffed (magic numbers) against the formats the service decodes, the pixel count is read from
the header and refused before any pixel is decoded (a 1 KB PNG can claim 100,000 x 100,000
pixels), and only then does PIL decode it. Request bodies are capped while they stream in
(`BodyLimit`), so a huge upload is refused without being held in memory.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from PIL import Image

from visiontune.data.images import open_image, read_header
from visiontune.errors import ImageError, ImageTooLargeError

# (format, leading bytes); WebP also needs "WEBP" at offset 8
SIGNATURES = (
    ("JPEG", b"\xff\xd8\xff"),
    ("PNG", b"\x89PNG\r\n\x1a\n"),
    ("GIF", b"GIF87a"),
    ("GIF", b"GIF89a"),
    ("BMP", b"BM"),
    ("TIFF", b"II*\x00"),
    ("TIFF", b"MM\x00*"),
    ("WebP", b"RIFF"),
)
FORMATS = ("JPEG", "PNG", "WebP", "GIF", "BMP", "TIFF")
_LOOKS_LIKE = (
    (b"<svg", "an SVG drawing"),
    (b"<?xml", "an XML document"),
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"%pdf", "a PDF"),
    (b"pk\x03\x04", "a ZIP archive"),
    (b"{", "JSON text"),
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class BodyTooLargeError(ImageTooLargeError):
    """A request body over the upload limit (raised while it streams in)."""


def sniff(data: bytes) -> str | None:
    """The image format the bytes start with (one of FORMATS), or None."""
    for name, magic in SIGNATURES:
        if data.startswith(magic) and (name != "WebP" or data[8:12] == b"WEBP"):
            return name
    return None


def decode_upload(data: bytes, *, name: str, max_bytes: int, max_pixels: int, draft: tuple[int, int]) -> Image.Image:
    """An upright RGB image from uploaded bytes, or ImageError (-> 422) / ImageTooLargeError (-> 413).

    `draft` (w, h) lets a large JPEG decode at a reduced scale that still covers the model's input.
    """
    _check_bytes(data, name=name, max_bytes=max_bytes)
    try:  # the pixel count is checked from the header, before decoding
        return open_image(io.BytesIO(data), max_pixels=max_pixels, draft_size=draft)
    except ImageError as exc:  # named after the upload, not "<stream>"
        raise type(exc)(name, exc.reason) from exc


def pixels_to_decode(data: bytes, *, name: str, max_bytes: int, max_pixels: int, draft: tuple[int, int]) -> int:
    """How many pixels `decode_upload` will hold, from the header alone, after the same checks (ImageError).

    A JPEG counts at the reduced scale `draft` allows; the larger side of `draft` stands for both,
    so the count is never below what is decoded, whatever the EXIF orientation.
    """
    _check_bytes(data, name=name, max_bytes=max_bytes)
    try:
        header = read_header(io.BytesIO(data), max_pixels=max_pixels)
    except ImageError as exc:
        raise type(exc)(name, exc.reason) from exc
    if header.format not in ("JPEG", "MPO"):
        return header.pixels
    with Image.open(io.BytesIO(data)) as image:  # read_header opened these bytes: this can't fail
        side = max(draft)
        image.draft("RGB", (side, side))  # sets the decoding scale, decodes nothing
        return image.width * image.height


def _check_bytes(data: bytes, *, name: str, max_bytes: int) -> None:
    """What the bytes alone tell: empty, over the upload limit, or not any image format decoded here."""
    if not data:
        raise ImageError(name, "empty file (0 bytes); send an image")
    if len(data) > max_bytes:
        raise ImageTooLargeError(name, f"{len(data):,} bytes is over the upload limit of {max_bytes:,}")
    if sniff(data) is None:
        raise ImageError(name, f"not an image: the content looks like {_looks_like(data)}; send {_formats()}")


def decode_base64(text: object, *, name: str) -> bytes:
    """Bytes from a base64 string, with or without a `data:image/...;base64,` prefix."""
    if not isinstance(text, str) or not text:
        raise ImageError(name, 'send {"image": "<base64 of the image file>"}')
    payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(name, f"not valid base64 ({exc})") from exc


def _looks_like(data: bytes) -> str:
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    for prefix, what in _LOOKS_LIKE:
        if head.startswith(prefix):
            return what
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head[:256])
    return "text" if head and printable == len(head[:256]) else "an unrecognised binary format"


def _formats() -> str:
    return ", ".join(FORMATS[:-1]) + " or " + FORMATS[-1]


class BodyLimit:
    """ASGI middleware: request bodies on limited paths stop at `limit_for(path)` bytes with a 413.

    A declared Content-Length over the limit is refused before the body is read; a body that
    streams in without one (chunked) is counted and cut off the moment it passes the limit.
    """

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[str], int | None]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        limit = self.limit_for(scope["path"]) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            message = f"the request body ({int(declared):,} bytes) is over the limit of {limit:,} bytes"
            await send_error(send, 413, f"{message}; send a smaller image")
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            if seen > limit:
                raise BodyTooLargeError("<request>", f"the request body is over the limit of {limit:,} bytes")
            return message

        await self.app(scope, counted, send)


async def send_error(send: Callable[[Message], Awaitable[None]], status: int, message: str) -> None:
    """Answer `{"error": message}` with `status` from ASGI middleware, before the app has read the request."""
    from starlette.responses import JSONResponse

    async def no_body() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    await JSONResponse({"error": message}, status_code=status)({"type": "http"}, no_body, send)
