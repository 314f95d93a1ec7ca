"""Which sites may talk to the server: allowed Host names, and same-origin POSTs only.

A server without an API key on loopback is still reachable from any web page the user opens.
Two guards close that:

- DNS rebinding: a page on evil.example re-points its own name at 127.0.0.1, and its scripts then
  read this server as if it were evil.example. The browser still sends `Host: evil.example`, so
  only the names the server was started for are answered (400 otherwise).
- Cross-site posts: a page elsewhere can POST a form or a fetch here without reading the answer,
  and the model does the work. Browsers name the page in `Origin`, so a POST whose Origin is not
  this server, an allowed host or an `allow_origins` entry gets a 403. Clients that are not
  browsers (curl, scripts) send no Origin and pass.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from visiontune.serve.uploads import ASGIApp, Message, Scope, send_error

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
ANY = "*"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def allowed_hosts(bind: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The Host names a server bound to `bind` answers: loopback, `bind` when it is one address, and `extra`.

    Example:
        >>> allowed_hosts("192.168.1.20", ["models.lan"])
        ('localhost', '127.0.0.1', '[::1]', '192.168.1.20', 'models.lan')
    """
    names = list(LOOPBACK_HOSTS)
    if not _every_interface(bind):
        names.append(f"[{bind}]" if ":" in bind else bind)
    first: dict[str, str] = {}  # one spelling per name: binding 127.0.0.1 adds nothing
    for name in [*names, *extra]:
        first.setdefault(_hostname(name), name)
    return tuple(first.values())


def _every_interface(bind: str) -> bool:
    """0.0.0.0 or :: (or empty): no one name reaches the server, so none is added."""
    try:
        return not bind or ipaddress.ip_address(bind.strip("[]")).is_unspecified
    except ValueError:
        return False


def _hostname(netloc: str) -> str:
    """'Example.com:8000' -> 'example.com', '[::1]:8000' -> '::1'; '' for anything but host[:port]."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
    elif netloc.count(":") > 1:  # a bare IPv6 address, as given to --allowed-host
        host, rest = netloc, ""
    else:
        host, colon, port = netloc.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return ""
    return host.rstrip(".")


def _origin_host(origin: str) -> str:
    """The host of an Origin header ('https://app.example:8443' -> 'app.example'); '' for 'null' and junk."""
    scheme, sep, netloc = origin.partition("://")
    return _hostname(netloc) if sep and scheme in ("http", "https") and "/" not in netloc else ""


def normal_origin(origin: str) -> str:
    """An origin as compared: lower case, no trailing slash."""
    return origin.strip().lower().rstrip("/")


class HostGuard:
    """ASGI middleware: 400 for a Host not in `hosts` (unless '*' is), 403 for a cross-origin unsafe request."""

    def __init__(self, app: ASGIApp, *, hosts: Sequence[str], origins: Sequence[str] = ()) -> None:
        self.app = app
        self.hosts = frozenset(_hostname(h) for h in hosts if h != ANY)
        self.any_host = ANY in hosts
        self.origins = frozenset(normal_origin(o) for o in origins)
        self.shown = ", ".join(hosts)

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.lower(): value.decode("latin-1") for key, value in scope.get("headers") or []}
        host = headers.get(b"host", "")
        origin = headers.get(b"origin")
        if not self.any_host and _hostname(host) not in self.hosts:
            await send_error(send, 400, self._host_error(host))
        elif origin is not None and scope["method"] not in _SAFE_METHODS and not self._same_site(origin, host):
            await send_error(send, 403, self._origin_error(origin))
        else:
            await self.app(scope, receive, send)

    def _same_site(self, origin: str, host: str) -> bool:
        """This server's own page (the Origin names the Host asked for), an allowed host, or a listed origin."""
        if ANY in self.origins or normal_origin(origin) in self.origins:
            return True
        name = _origin_host(origin)
        return bool(name) and (name == _hostname(host) or name in self.hosts)

    def _host_error(self, host: str) -> str:
        shown = repr(host[:100]) if host else "(none)"
        return (
            f"Host {shown} is not a name this server answers to (allowed: {self.shown}); "
            "if it is yours, start the server with --allowed-host NAME"
        )

    def _origin_error(self, origin: str) -> str:
        return (
            f"cross-origin request from {origin[:100]!r} refused: only this server's own page may post here; "
            f"to accept that site, start the server with --allow-origin {origin[:100]}"
        )
