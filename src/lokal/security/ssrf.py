"""SSRF guard for server-side pulls: an HTTP transport that connects only to public addresses.

A pull that a remote caller asks for (``POST /api/pull {"model": "http://…"}``) must not make the server
fetch from its own loopback, its LAN or a cloud metadata service (169.254.169.254). Checking the URL's
host name is not enough: a name can resolve to 127.0.0.1, and a public server can redirect to one. So
the check sits where connections are made: every connection — the first request and every redirect —
resolves the host itself, refuses when any address it resolves to is not public, and connects to the
address it checked (no second lookup that DNS rebinding could answer differently). TLS still verifies
the certificate against the host name, which httpcore sends as SNI independently of the address.

LOKAL_ALLOW_PRIVATE_PULLS=1 turns the guard off (a server pulling from a registry on its own LAN).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from typing import Any, Callable, Iterable

import httpcore
import httpx

from lokal.errors import BadRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class PrivateAddressRefused(BadRequest):
    pass


def is_public(address: Address) -> bool:
    """Globally routable unicast: not private, loopback, link-local, CGNAT, multicast or reserved."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def resolve(host: str, port: int) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))


class _PublicOnlyBackend(httpcore.NetworkBackend):
    def __init__(self, is_allowed: Callable[[Address], bool]):
        self._backend = httpcore.SyncBackend()
        self._is_allowed = is_allowed

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        addresses = resolve(host, port)
        refused = [address for address in addresses if not self._is_allowed(address)]
        if refused or not addresses:
            raise PrivateAddressRefused(
                f"refusing to pull from {host} ({', '.join(map(str, refused or addresses))}): a private, loopback "
                f"or link-local address; a server pulls only from public addresses unless "
                f"LOKAL_ALLOW_PRIVATE_PULLS=1")
        return self._backend.connect_tcp(str(addresses[0]), port, timeout, local_address, socket_options)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        raise PrivateAddressRefused("refusing to pull through a unix socket")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def public_only_transport(verify: bool | ssl.SSLContext = True,
                          is_allowed: Callable[[Address], bool] = is_public) -> httpx.HTTPTransport:
    """An httpx transport whose every connection goes through the address check (``is_allowed`` is for
    tests that stand up servers on loopback)."""
    transport = httpx.HTTPTransport(verify=verify)
    pool = transport._pool  # httpx builds the pool; only its network backend changes
    if not hasattr(pool, "_network_backend"):
        raise RuntimeError("this httpcore version keeps its network backend elsewhere; update lokal.security.ssrf")
    pool._network_backend = _PublicOnlyBackend(is_allowed)
    return transport
