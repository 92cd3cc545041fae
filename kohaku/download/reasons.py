"""Why an image is rejected, as a stable text: the format and what is wrong, never per-item
noise (object addresses, byte counts, paths), so that the same failure reads the same for
every post and the UI's error table groups them. Shared by both image paths (Pillow in
`resize`, libvips in `resize_vips`). Reads and writes nothing.
"""

from __future__ import annotations

import re


class ImageRejected(ValueError):
    """The bytes are not an image we keep; the message says why (recorded per post)."""


# per-item detail in library messages: `<_io.BytesIO object at 0x7f...>`, stray addresses,
# `(185 bytes not processed)`, quoted or absolute paths
NOISE = (
    (re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>"), ""),
    (re.compile(r"\s*\b0x[0-9a-fA-F]{4,}\b"), ""),
    (re.compile(r"\s*\([^()]*\d[^()]*\)"), ""),
    (re.compile(r"""(['"])(?:/|~/|[A-Za-z]:\\)[^'"]*\1"""), "<path>"),  # quoted
    (re.compile(r"(?<![\w.])/(?:[\w.-]+/)+[\w.-]*"), "<path>"),  # bare, absolute
)  # fmt: skip
SIGNATURES = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP",
              b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}  # fmt: skip


def stable_reason(message: str) -> str:
    """A library's error message without per-item detail, so equal failures read the same."""
    for pattern, replacement in NOISE:
        message = pattern.sub(replacement, message)
    return message.strip().rstrip(".:") or "unknown error"


def what_it_is(data: bytes) -> str:
    """What bytes that no decoder recognises look like: the usual non-images a server sends
    instead of a file (an HTML error or challenge page, JSON, nothing), or a known image
    signature whose header is broken."""
    head = data[:64].lstrip().lower()
    if not head:
        return "empty body"
    if head.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if head.startswith((b"{", b"[")):
        return "JSON text"
    fmt = signature(data)
    return f"broken {fmt} header" if fmt else "unknown format"


def signature(data: bytes) -> str | None:
    """The image format that the first bytes announce, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in SIGNATURES.items() if data.startswith(magic)), None)


def unreadable(fmt: str | None, detail: str) -> ImageRejected:
    """The rejection of an image whose pixels could not be decoded."""
    return ImageRejected(f"not a readable image: broken {fmt or 'image'} ({detail})")


def over_limit(max_pixels: int) -> ImageRejected:
    # the size itself is left out: it differs per post, and the reason groups failures
    return ImageRejected(f"image over the {max_pixels} pixel limit (download.max_pixels)")
