"""The first protocol of every connection on a TLS listener: it looks at the
first bytes before TLS starts, so that plain HTTP sent to the HTTPS port gets
an answer instead of a handshake failure and silence.

A TLS connection opens with a handshake record, content type 22 (0x16;
RFC 8446 5.1, RFC 5246 6.2.1). Anything else (``GET / HTTP/1.1``, an
SSLv2-style hello, which TLS 1.2+ refuses anyway) is answered, as nginx
does, with ``400 Bad Request`` in plain text, "The plain HTTP request was
sent to HTTPS port", and ``Connection: close``. The rest of what the client
sends is read and dropped for a moment (a lingering close, as nginx's) so
that the kernel does not reset the connection over unread bytes before the
client has read the answer.

A handshake record starts TLS on the same transport, exactly as a listener
created with ``ssl=`` would: the event loop's own SSL protocol (uvloop's
under uvloop) is put in front of the application protocol and given the
bytes already read. A connection that sends nothing within ``timeout``
seconds (``[timeouts] header``) is closed, as is one whose handshake is not
done within ``timeout`` (a partial hello, then silence).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

TLS_HANDSHAKE = 0x16

BODY = b"The plain HTTP request was sent to HTTPS port: use https:// for this address.\n"
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Cache-Control: no-store\r\n"
    b"Connection: close\r\n"
    b"\r\n" % len(BODY)
) + BODY

# After the 400: how long the client's rest (a body, pipelined requests) is
# read and dropped before the connection is closed for good. Reading it all,
# however much, is what keeps the kernel from answering unread bytes with a
# reset that could destroy the 400 before the client has read it.
LINGER_SECONDS = 2.0


def _ssl_protocol_class(loop: asyncio.AbstractEventLoop) -> type:
    import uvloop
    from uvloop.loop import SSLProtocol as UVSSLProtocol

    if isinstance(loop, uvloop.Loop):
        return UVSSLProtocol
    from asyncio.sslproto import SSLProtocol

    return SSLProtocol


def _retrieve(waiter: asyncio.Future[None]) -> None:
    # The handshake's outcome matters to nobody here (a failed one closes
    # the transport); retrieving it keeps asyncio from logging it.
    if not waiter.cancelled():
        waiter.exception()


class TLSPortProtocol(asyncio.Protocol):
    """``TLSPortProtocol(context, app_factory, timeout)``: ``context`` the
    server's SSLContext, ``app_factory()`` the application protocol that
    sees the decrypted stream, ``timeout`` seconds to wait for the first
    byte."""

    def __init__(self, context: ssl.SSLContext, app_factory: Callable[[], asyncio.BaseProtocol],
                 timeout: float) -> None:
        self.context = context
        self.app_factory = app_factory
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.lingering = False  # the 400 is sent: drop what comes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not subclass asyncio.Transport.)
        self.transport = transport  # type: ignore[assignment]
        self.timer = asyncio.get_running_loop().call_later(self.timeout, transport.abort)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if self.lingering:
            return
        if self.timer is not None:
            self.timer.cancel()
        if data[0] == TLS_HANDSHAKE:
            self._start_tls(transport, data)
        else:
            self._refuse(transport)

    def eof_received(self) -> bool:
        return False  # close; a lingering close has nothing more to wait for

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def _refuse(self, transport: asyncio.Transport) -> None:
        self.lingering = True
        transport.write(PLAIN_HTTP_ANSWER)
        try:
            transport.write_eof()
        except (NotImplementedError, OSError):
            transport.close()
            return
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(LINGER_SECONDS, transport.close)

    def _start_tls(self, transport: asyncio.Transport, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        waiter.add_done_callback(_retrieve)
        # The handshake gets the header timeout too (not the event loop's
        # 60 s default): a client that sends the first byte of a hello and
        # then nothing would otherwise hold the connection that long.
        tls = _ssl_protocol_class(loop)(loop, self.app_factory(), self.context, waiter,
                                        server_side=True, ssl_handshake_timeout=self.timeout)
        # As loop.start_tls() does, with the bytes already read handed on.
        transport.pause_reading()
        transport.set_protocol(tls)
        tls.connection_made(transport)
        view = memoryview(data)
        while view and not transport.is_closing():
            buf = tls.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            tls.buffer_updated(n)
            view = view[n:]
        self.transport = None
        if not transport.is_closing():
            transport.resume_reading()
