"""TCP ports on this machine: which addresses listen on a port, and a port a new server can take.

A port found free by binding to port 0 and releasing it (what ``portpicker``
and most code do, TFF's local runtime included) comes from the kernel's
ephemeral range, the range every outgoing connection also takes its local
port from. Between the release and the server's own bind, a connection made
by any program on the machine can take it, and the server's bind then fails
("Address already in use"). TFF's worker exits at once when that happens and
TFF waits for it forever: a notebook cell that never ends, seen once in the
test suite while the other test worker made many local connections.
:func:`free_port` therefore takes ports below the ephemeral range, which no
outgoing connection is given.
"""

from __future__ import annotations

import ipaddress
import pathlib
import random
import socket

_EPHEMERAL_RANGE = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000  # below: ports that services are often configured on
_handed_out: set[int] = set()  # ports this process gave away: not given twice, though a server may not listen yet


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux; IANA's 49152-65535 elsewhere)."""
    try:
        low, high = (int(v) for v in _EPHEMERAL_RANGE.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 49152, 65535


def listening_addresses(port: int) -> list[str]:
    """Addresses with a TCP socket listening on ``port``, read from /proc/net (Linux; empty elsewhere)."""
    found = []
    for name, width in (("tcp", 8), ("tcp6", 32)):
        path = pathlib.Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            hex_addr, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(hex_addr)
            if width == 8:
                found.append(str(ipaddress.IPv4Address(raw[::-1])))
            else:  # four little-endian 32-bit words
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                address = ipaddress.IPv6Address(words)
                found.append(str(address.ipv4_mapped or address))
    return found


def can_tell_listening() -> bool:
    """Whether :func:`listening_addresses` can see listening sockets here (it reads Linux's /proc/net)."""
    return pathlib.Path("/proc/net/tcp").exists()


def _bindable(port: int) -> bool:
    """Nothing is bound to ``port`` on any IPv4 or IPv6 address (what a server on every interface needs)."""
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this machine
            continue
        with s:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True


def free_port(rng: random.Random | None = None) -> int:
    """A TCP port nothing is bound to now, below the ephemeral range (see the module's docstring), not given
    out before by this process. Falls back to one the kernel picks where the ephemeral range leaves no room."""
    rng = rng or random.SystemRandom()
    low, _ = ephemeral_range()
    if low - _LOWEST >= 1_000:
        for _ in range(200):
            port = rng.randrange(_LOWEST, low)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    _handed_out.add(port)
    return port
