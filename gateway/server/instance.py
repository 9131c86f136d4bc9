"""Refuse to start a second gateway on an address that is already served.

Workers bind their listeners with SO_REUSEPORT (see ``worker.bind_socket``),
so the kernel would let a second ``schoolgate run`` by the same user join the
first one's port silently, splitting the traffic and doubling every limit.
Before any worker is forked, the supervisor claims each listen address:

1. **A lock per address**: an abstract Unix socket named after the address
   (``\\0schoolgate/listen/127.0.0.1:8080``; Linux, no file to clean up). Only
   one process can bind a name; the supervisor holds it while it lives, and
   its workers inherit it, so it lapses only when the last of them has exited
   (even after SIGKILL). This also settles two instances started at the same
   moment, which a probe alone could not: exactly one gets the lock.
2. **A bind probe without SO_REUSEPORT**: the kernel refuses it while any
   socket listens on an overlapping address (the same address, or a wildcard
   ``0.0.0.0``/``[::]`` over a specific one and back), whoever owns it, so a
   port held by another program (nginx, an older gateway without the lock) is
   caught too, as are addresses that are not on this host and ports below
   1024 without CAP_NET_BIND_SERVICE. The probe is bound but never listens,
   so it takes no connection meant for anyone.

What is left: two instances started at the same moment on overlapping but
different addresses (``0.0.0.0:8080`` and ``127.0.0.1:8080``) each get their
own lock, and may both pass the probe before either listens.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Iterable

from gateway.config import Config, parse_hostport

LOCK_PREFIX = "schoolgate/listen/"


class AddressTaken(Exception):
    """A listen address that cannot be claimed: ``key`` (``server.listen``),
    ``addr`` as configured, ``reason`` (a short sentence)."""

    def __init__(self, key: str, addr: str, reason: str) -> None:
        super().__init__(f"{key}: cannot listen on {addr}: {reason}")
        self.key = key
        self.addr = addr
        self.reason = reason


class Claim:
    """The locks of the claimed addresses; they lapse on ``close()`` or when
    this process and every child that inherited them has exited."""

    def __init__(self, locks: list[socket.socket]) -> None:
        self.locks = locks

    def close(self) -> None:
        for lock in self.locks:
            lock.close()
        self.locks = []


def listen_addresses(cfg: Config) -> list[tuple[str, str]]:
    """``(key, address)`` of each listener the config opens."""
    out = [("server.listen", cfg.server.listen)]
    if cfg.server.admin_listen:
        out.append(("server.admin_listen", cfg.server.admin_listen))
    return out


def claim_addresses(addresses: Iterable[tuple[str, str]]) -> Claim:
    """Claim every ``(key, address)`` or none: raises :class:`AddressTaken`
    for the first one already served (by another schoolgate, named as such,
    or by any other process), or that cannot be bound at all."""
    locks: list[socket.socket] = []
    try:
        for key, addr in addresses:
            host, port = parse_hostport(addr)
            lock = _lock(key, addr, host, port)
            if lock is not None:
                locks.append(lock)
            _probe(key, addr, host, port)
    except BaseException:
        for lock in locks:
            lock.close()
        raise
    return Claim(locks)


def _lock(key: str, addr: str, host: str, port: int) -> socket.socket | None:
    if not sys.platform.startswith("linux"):
        return None  # no abstract socket namespace: the probe alone decides
    # One name per address as the kernel sees it ("[::0]:80" and "[::]:80" alike).
    name = LOCK_PREFIX + (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind("\0" + name)
    except OSError as err:
        lock.close()
        if err.errno == errno.EADDRINUSE:
            raise AddressTaken(key, addr, "already served by another schoolgate process "
                               "(stop it first, or choose another address)") from None
        raise AddressTaken(key, addr, err.strerror or str(err)) from None
    return lock


def _probe(key: str, addr: str, host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as the workers set it, so that connections of an
        # earlier run in TIME_WAIT do not count; no SO_REUSEPORT, so that a
        # listener already there does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise AddressTaken(key, addr, err.strerror or str(err)) from None
