"""Limits on an HTTP/1.1 message head, one set for both sides (pure).

gateway/httpserver.py holds client requests to them and gateway/upstream.py holds upstream
responses to the same ones (field size, field count, whole head, however the bytes arrive).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_target: int = 8190  # bytes of the request target (aiohttp's max_line_size)
    max_field: int = 16384  # bytes of one header name or value (aiohttp's max_field_size)
    max_headers: int = 128
    max_head: int = 65536  # bytes of the whole head (aiohttp has no such limit)
    head_timeout: float = 75.0  # seconds to deliver a complete request head
