"""Who is on the other end of the control socket, and what they may do.

Identity comes only from the kernel (``SO_PEERCRED`` on the accepted unix socket), never from
anything the client sends. :func:`role_of` is the pure decision: root may do everything;
``[control] operators`` (user or group names) may query and act; ``[control] readers`` may query;
everyone else is refused. Name and group lookups go through an injectable ``uid_lookup``; the
server repeats them for every request (:func:`refresh`), so a user removed from a group loses its
rights on a connection that is already open. The login uid (``/proc/PID/loginuid``, set at login
and kept across ``sudo``/``su``) tells the two-person rule who the person behind a uid is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import os
import pwd
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["ROLE_RANK", "Credentials", "Peer", "Role", "UidLookup", "allowed", "identify",
           "login_uid", "read_credentials", "refresh", "role_of", "system_uid_lookup"]

UNSET_LOGIN_UID = 2 ** 32 - 1

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
    login_uid: int | None = None


@dataclass(frozen=True)
class Credentials:
    """``SO_PEERCRED`` of a connected unix socket."""

    pid: int
    uid: int
    gid: int


UidLookup = Callable[[int, int], tuple[str, tuple[str, ...]]]


def system_uid_lookup(uid: int, gid: int) -> tuple[str, tuple[str, ...]]:
    """User name and group names (primary and supplementary) from the system databases."""
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}", ()
    groups: set[str] = set()
    for group_id in os.getgrouplist(user, gid):
        with contextlib.suppress(KeyError):
            groups.add(grp.getgrgid(group_id).gr_name)
    return user, tuple(sorted(groups))


def read_credentials(sock: socket.socket) -> Credentials:
    """Read ``SO_PEERCRED`` (pid, uid, gid) from a connected unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Credentials(pid=pid, uid=uid, gid=gid)


def login_uid(pid: int, *, proc: Path = Path("/proc")) -> int | None:
    """The audit login uid of ``pid``, or None when unset or unreadable."""
    try:
        value = int((proc / str(pid) / "loginuid").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if value == UNSET_LOGIN_UID else value


def identify(creds: Credentials, lookup: UidLookup = system_uid_lookup, *,
             proc: Path = Path("/proc")) -> Peer:
    """The peer behind ``creds``: names from ``lookup``, login uid from ``/proc``."""
    user, groups = lookup(creds.uid, creds.gid)
    return Peer(uid=creds.uid, gid=creds.gid, pid=creds.pid, user=user, groups=groups,
                login_uid=login_uid(creds.pid, proc=proc))


def refresh(peer: Peer, lookup: UidLookup = system_uid_lookup) -> Peer:
    """``peer`` with its user and group names looked up again (for each request)."""
    user, groups = lookup(peer.uid, peer.gid)
    return dataclasses.replace(peer, user=user, groups=groups)


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
