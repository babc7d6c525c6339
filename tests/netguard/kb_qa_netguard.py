"""A socket guard for the test suite: any attempt to reach a host other than this machine is refused and recorded.

Patched: `socket.socket.connect`/`connect_ex`/`sendto` (every TCP/UDP socket made through Python's socket module,
ssl and asyncio included) and `socket.getaddrinfo` (a DNS lookup of a remote name is itself data leaving the
machine). Allowed: AF_UNIX, 127.0.0.0/8, ::1 (and ::ffff:127.x), the unspecified address (it means this host),
IP literals in lookups (no query is made), and the names `localhost`/None/"" in lookups. Everything else raises
`OutboundConnectionBlocked` (an OSError, so well-behaved libraries fail fast and carry on) and is appended to
`ATTEMPTS`, and to the file named by $KB_QA_NETGUARD_LOG if set (how subprocesses report back: the tests'
sitecustomize.py installs this guard in every Python subprocess whose PYTHONPATH includes this folder).

Not covered: C code that opens sockets itself (libcurl, gRPC's core, a C resolver call), and subprocesses
started with `python -I`/`-S` or a PYTHONPATH without this folder.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading

LOG_ENV = "KB_QA_NETGUARD_LOG"
ATTEMPTS: list[str] = []
_LOCK = threading.Lock()
_ORIGINAL: dict[str, object] = {}
_STATE = {"log": False}  # True in subprocesses: they report through the log file
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class OutboundConnectionBlocked(OSError):
    """Raised instead of contacting another machine during the tests."""


def _is_local_ip(text: str) -> bool | None:
    """True/False for an IP literal (loopback or unspecified = local), None for a host name."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def _local_address(family: int, address) -> bool:
    if family == getattr(socket, "AF_UNIX", object()) or not isinstance(address, tuple) or not address:
        return True  # AF_UNIX paths, netlink and other local families
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host)
    local = _is_local_ip(host)
    return host.lower() in _LOCAL_NAMES if local is None else local


def _record(what: str, target) -> OutboundConnectionBlocked:
    line = f"{what} {target!r} (pid {os.getpid()})"
    with _LOCK:
        ATTEMPTS.append(line)
        path = os.environ.get(LOG_ENV)
        if path and _STATE["log"]:
            try:
                with open(path, "a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
            except OSError:
                pass
    return OutboundConnectionBlocked(f"kb_qa test network guard: refused {line}; only loopback is allowed")


def _guarded_connect(self, address):
    if not _local_address(self.family, address):
        raise _record("connect", address)
    return _ORIGINAL["connect"](self, address)


def _guarded_connect_ex(self, address):
    if not _local_address(self.family, address):
        raise _record("connect", address)
    return _ORIGINAL["connect_ex"](self, address)


def _guarded_sendto(self, data, *args):
    address = args[-1] if args else None
    if address is not None and not _local_address(self.family, address):
        raise _record("sendto", address)
    return _ORIGINAL["sendto"](self, data, *args)


def _guarded_getaddrinfo(host, port, *args, **kwargs):
    if host is not None:
        name = host.decode("idna") if isinstance(host, bytes) else str(host)
        if name and _is_local_ip(name) is None and name.lower().rstrip(".") not in _LOCAL_NAMES:
            raise _record("getaddrinfo", (name, port))
    return _ORIGINAL["getaddrinfo"](host, port, *args, **kwargs)


def install(*, log_to_file: bool = False) -> None:
    """Patch the socket module (idempotent). `log_to_file`: also append attempts to $KB_QA_NETGUARD_LOG (for a
    subprocess; the process that reads the log keeps its own attempts in ATTEMPTS)."""
    _STATE["log"] = log_to_file
    if _ORIGINAL:
        return
    _ORIGINAL.update(connect=socket.socket.connect, connect_ex=socket.socket.connect_ex,
                     sendto=socket.socket.sendto, getaddrinfo=socket.getaddrinfo)
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = _guarded_sendto  # type: ignore[method-assign]
    socket.getaddrinfo = _guarded_getaddrinfo


def take_attempts() -> list[str]:
    """The attempts recorded so far in this process and (via the log file) its subprocesses; clears both."""
    with _LOCK:
        seen = list(ATTEMPTS)
        ATTEMPTS.clear()
        path = os.environ.get(LOG_ENV)
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                seen.extend(line.rstrip("\n") for line in handle if line.strip())
            open(path, "w").close()
    return seen
