"""Minimal RFC 6455 server side for the test upstream's /ws endpoint."""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


class WebSocketEcho:
    """Minimal RFC 6455 server side: echoes data frames as they come.

    Frames are echoed one by one with their opcode and FIN bit, so fragmented
    messages come back fragmented the same way; no reassembly is needed.
    """

    def __init__(self, write: Callable[[bytes], None], close: Callable[[], None]) -> None:
        self._write = write
        self._close = close
        self._buf = bytearray()
        self._closing = False

    def feed(self, data: bytes) -> None:
        self._buf += data
        while not self._closing:
            frame = self._next_frame()
            if frame is None:
                return
            first, payload = frame
            opcode = first & 0x0F
            if opcode == 0x9:  # ping
                self._send(0x80 | 0xA, payload)
            elif opcode == 0x8:  # close: answer with the same code, then hang up
                self._send(0x80 | 0x8, payload[:2])
                self._closing = True
                self._close()
            elif opcode != 0xA:
                self._send(first & 0x8F, payload)

    def _next_frame(self) -> tuple[int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        length, pos = buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, pos = struct.unpack_from(">H", buf, 2)[0], 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, pos = struct.unpack_from(">Q", buf, 2)[0], 10
        masked = bool(buf[1] & 0x80)
        end = pos + (4 if masked else 0) + length
        if len(buf) < end:
            return None
        first = buf[0]
        payload = bytes(buf[end - length:end])
        if masked and length:
            mask = bytes(buf[pos:pos + 4]) * (length // 4 + 1)
            value = int.from_bytes(payload, "big") ^ int.from_bytes(mask[:length], "big")
            payload = value.to_bytes(length, "big")
        del buf[:end]
        return first, payload

    def _send(self, first: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack(">BB", first, n)
        elif n < 1 << 16:
            head = struct.pack(">BBH", first, 126, n)
        else:
            head = struct.pack(">BBQ", first, 127, n)
        self._write(head + payload)
