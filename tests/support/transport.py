"""A recording stand-in for the asyncio transport a protocol object is given,
for driving protocols without sockets (connection_made, then data_received)."""

from __future__ import annotations


class MockTransport:
    """The part of asyncio.Transport the proxy's protocols use, recording calls."""

    def __init__(self, peer: str = "192.0.2.7") -> None:
        self.peer = peer
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.reading = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": (self.peer, 40000), "sockname": ("127.0.0.1", 1)}.get(
            name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.write(part)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    @property
    def done(self) -> bool:
        """The client can no longer send: closed, or half-closed to linger."""
        return self.closed or self.eof_written
