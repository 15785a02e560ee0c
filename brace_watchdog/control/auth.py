"""Who is on the other end of the control socket, and what they may do.

Identity comes only from the kernel (``SO_PEERCRED`` on the accepted unix socket), never from
anything the client sends. :func:`role_of` is the pure decision: root may do everything;
``[control] operators`` (user or group names) may query and act; ``[control] readers`` may query;
everyone else is refused. Name and group lookups go through an injectable ``uid_lookup``.
"""

from __future__ import annotations

import contextlib
import grp
import pwd
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["ROLE_RANK", "Peer", "Role", "UidLookup", "allowed", "peer_credentials",
           "role_of", "system_uid_lookup"]

Role = Literal["reader", "operator"]
ROLE_RANK: dict[str | None, int] = {None: 0, "reader": 1, "operator": 2}


@dataclass(frozen=True)
class Peer:
    """The kernel's word on the connected process, plus the names we resolved for its uid."""

    uid: int
    gid: int
    pid: int
    user: str
    groups: tuple[str, ...] = ()


UidLookup = Callable[[int, int], tuple[str, tuple[str, ...]]]


def system_uid_lookup(uid: int, gid: int) -> tuple[str, tuple[str, ...]]:
    """User name and group names (primary and supplementary) from the system databases."""
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}", ()
    groups: set[str] = set()
    with contextlib.suppress(KeyError):
        groups.add(grp.getgrgid(gid).gr_name)
    groups.update(g.gr_name for g in grp.getgrall() if user in g.gr_mem)
    return user, tuple(sorted(groups))


def peer_credentials(sock: socket.socket, lookup: UidLookup = system_uid_lookup) -> Peer:
    """Read ``SO_PEERCRED`` (pid, uid, gid) from a connected unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    user, groups = lookup(uid, gid)
    return Peer(uid=uid, gid=gid, pid=pid, user=user, groups=groups)


def role_of(peer: Peer, *, readers: Iterable[str], operators: Iterable[str]) -> Role | None:
    """The strongest role the peer holds. Entries name users, or groups as ``@group``/``group``.

    An entry matches the peer's user name, or one of its groups. Root (uid 0) is an operator.
    """
    if peer.uid == 0:
        return "operator"
    names = {peer.user, *peer.groups, *(f"@{g}" for g in peer.groups)}
    if names & set(operators):
        return "operator"
    if names & set(readers):
        return "reader"
    return None


def allowed(held: Role | None, needed: Role) -> bool:
    """Operators may do what readers may; nobody else may do anything."""
    return held is not None and ROLE_RANK[held] >= ROLE_RANK[needed]
