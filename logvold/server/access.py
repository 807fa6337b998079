"""Who is asking, for the file checks of `auth: local` (docs/SECURITY.md, "Who may read").

A daemon that reads files with root's access must not become a way around file
permissions for the other users of the node. With `auth: local` (no `auth` set):

- a client on the unix socket is identified by SO_PEERCRED: root and the daemon's own
  uid read everything; any other uid reads a file only if the file's mode bits let that
  uid (with its groups) open it and search every directory above it;
- a client over TCP, when the daemon has root's file access (euid 0, or
  CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH): a client in the daemon's network namespace is
  the uid owning its socket (/proc/net/tcp, as identd finds it) and is checked like a
  socket peer (groups from the user database); any other client is anonymous and reads
  only what ANY local user could open (the "other" bits). A daemon without root's file
  access can only read what its own user can, so nothing is checked (the README's
  unprivileged `logvold serve`).

`auth: none` (an explicit acknowledgement) and `auth: kubernetes` (TokenReview +
SubjectAccessReview in server/auth.py) trust the TCP client as before. POSIX ACLs are
not consulted: they can only make the check refuse a file a user could open.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from logvold.core.policy import ServerConfig

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2
_HOW_TO = (
    "use the unix socket (`logvold logs --socket PATH`, server.socket.path) as a user "
    "who can read it, or configure server.auth (docs/SECURITY.md)"
)


@dataclass(frozen=True)
class Peer:
    """Whose file permissions a request reads with.

    `trusted`: everything the daemon can read. Otherwise `uid`/`gids` (a socket peer) or,
    with uid None, an anonymous local user who only has the "other" permission bits."""

    trusted: bool
    uid: int | None = None
    gids: frozenset[int] = frozenset()
    via: str = "tcp"

    def describe(self) -> str:
        if self.trusted:
            return "trusted"
        return f"uid {self.uid}" if self.uid is not None else "an anonymous TCP client"


TRUSTED = Peer(trusted=True)
PEER_KEY = web.RequestKey("logvold.peer", Peer)


def has_root_file_access() -> bool:
    """Whether this process can read files regardless of their mode bits."""
    if os.geteuid() == 0:
        return True
    try:
        with Path("/proc/self/status").open(encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    return bool(caps & (1 << _CAP_DAC_OVERRIDE | 1 << _CAP_DAC_READ_SEARCH))
    except (OSError, ValueError, IndexError):
        pass
    return False


def _peer_groups(pid: int, gid: int) -> frozenset[int]:
    """The supplementary groups of the peer process (its /proc status), plus its gid."""
    gids = {gid}
    try:
        with Path(f"/proc/{pid}/status").open(encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    gids.update(int(g) for g in line.split()[1:])
                    break
    except (OSError, ValueError):
        pass  # no /proc view of the peer: its primary group only (can only refuse more)
    return frozenset(gids)


def socket_peer(sock: socket.socket) -> Peer:
    """The credentials of the process at the other end of a unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    if uid in (0, os.geteuid()):
        return Peer(trusted=True, uid=uid, via="socket")
    return Peer(trusted=False, uid=uid, gids=_peer_groups(pid, gid), via="socket")


def _hex_address(host: str, port: int) -> bytes:
    """An address as /proc/net/tcp{,6} prints it: each 32-bit word in host byte order."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    raw = socket.inet_pton(family, host.split("%")[0])
    words = [raw[i : i + 4] for i in range(0, len(raw), 4)]
    text = "".join(f"{struct.unpack('=I', w)[0]:08X}" for w in words)
    return f"{text}:{port:04X}".encode()


def tcp_peer_uid(sockname: tuple[Any, ...], peername: tuple[Any, ...]) -> int | None:
    """The uid owning the client end of a TCP connection made from this network namespace
    (its line in /proc/net/tcp{,6}, as identd finds it); None for a client elsewhere."""
    peer_host, local_host = str(peername[0]), str(sockname[0])
    if peer_host.startswith("::ffff:") and "." in peer_host:
        # An IPv4 client of a dual-stack listener: its own socket is in the IPv4 table.
        peer_host, local_host = peer_host[7:], local_host.removeprefix("::ffff:")
    key = _hex_address(peer_host, peername[1]) + b" " + _hex_address(local_host, sockname[1])
    table = "/proc/net/tcp6" if ":" in peer_host else "/proc/net/tcp"
    try:
        data = Path(table).read_bytes()
    except OSError:
        return None
    at = data.find(b": " + key + b" ")
    if at < 0:
        return None
    fields = data[at : data.find(b"\n", at)].split()
    try:
        return int(fields[7])  # ": local rem st tx:rx tr:when retrnsmt uid"
    except (IndexError, ValueError):
        return None


def _user_groups(uid: int) -> frozenset[int]:
    """The uid's groups from the user database (a TCP peer's process is not known)."""
    try:
        entry = pwd.getpwuid(uid)
        return frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except (KeyError, OSError):
        return frozenset()


def tcp_peer(sockname: tuple[Any, ...], peername: tuple[Any, ...]) -> Peer:
    uid = tcp_peer_uid(sockname, peername)
    if uid is None:
        return Peer(trusted=False)
    if uid in (0, os.geteuid()):
        return Peer(trusted=True, uid=uid)
    return Peer(trusted=False, uid=uid, gids=_user_groups(uid))


def make_access_middleware(server: ServerConfig, *, privileged: bool | None = None) -> Middleware:
    """Sets PEER_KEY on every request: who it reads as (see the module docstring)."""
    if privileged is None:
        privileged = has_root_file_access()
    check_tcp = server.auth == "local" and privileged

    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None and sock.family == socket.AF_UNIX:
            request[PEER_KEY] = socket_peer(sock)
        elif check_tcp:
            try:
                assert sock is not None
                request[PEER_KEY] = tcp_peer(sock.getsockname(), sock.getpeername())
            except (OSError, AssertionError, ValueError):  # gone already, or not IP
                request[PEER_KEY] = Peer(trusted=False)
        else:
            request[PEER_KEY] = TRUSTED
        return await handler(request)

    return access


def peer_of(request: web.Request) -> Peer:
    """The request's peer; TRUSTED when no access middleware runs (tests of one handler)."""
    peer: Peer = request.get(PEER_KEY, TRUSTED)
    return peer


def is_socket_peer(request: web.Request) -> bool:
    return peer_of(request).via == "socket"


def _allows(peer: Peer, st: os.stat_result, want: int) -> bool:
    """Mode-bit check of `want` (a combination of R=4, W=2, X=1) for `peer`."""
    mode = st.st_mode
    if peer.uid is not None and st.st_uid == peer.uid:
        bits = (mode >> 6) & 7
    elif peer.uid is not None and st.st_gid in peer.gids:
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    return bits & want == want


def _searchable(peer: Peer, directory: Path) -> str | None:
    """None if `peer` may search `directory` and every directory above it."""
    for d in (*reversed(directory.parents), directory):
        try:
            st = d.stat()
        except OSError:
            return None  # gone: the caller's open reports it
        if not _allows(peer, st, 1):
            return f"{d} is not searchable by {peer.describe()}"
    return None


def may_open(peer: Peer, path: Path | str) -> str | None:
    """None if `peer` could open `path` for reading (a directory: list it), else why not.

    Every directory above it must be searchable by the peer. A missing file is allowed
    (the caller reports it as it does today)."""
    if peer.trusted:
        return None
    absolute = Path(path).absolute()
    problem = _searchable(peer, absolute.parent)
    if problem is not None:
        return problem
    try:
        st = absolute.stat()
    except OSError:
        return None
    want = 5 if stat.S_ISDIR(st.st_mode) else 4
    if not _allows(peer, st, want):
        return f"{absolute} is not readable by {peer.describe()}"
    return None


def may_open_fd(peer: Peer, fd: int, path: str) -> str | None:
    """may_open for a file already opened (by the daemon) at `path`: the directories are
    checked by path, the file itself by its open descriptor (no swap in between)."""
    if peer.trusted:
        return None
    problem = _searchable(peer, Path(path).absolute().parent)
    if problem is not None:
        return problem
    st = os.fstat(fd)
    want = 5 if stat.S_ISDIR(st.st_mode) else 4
    if not _allows(peer, st, want):
        return f"{path} is not readable by {peer.describe()}"
    return None


def may_read_files(peer: Peer, directory: Path, names: list[str]) -> str | None:
    """None if `peer` could list `directory` and read each of `names` in it (a stream:
    its active file and segments), else the first reason why not."""
    if peer.trusted:
        return None
    problem = may_open(peer, directory)
    if problem is not None:
        return problem
    for name in names:
        try:
            st = os.lstat(directory / name)
        except OSError:
            continue  # removed meanwhile (retention): nothing to read there
        if not _allows(peer, st, 4):
            return f"{directory / name} is not readable by {peer.describe()}"
    return None


def forbid(request: web.Request, what: str, problem: str) -> web.HTTPForbidden:
    """The 403 of a file the client could not open itself, saying how to read it."""
    return web.HTTPForbidden(
        text=f"{what}: {problem}; with server.auth local (the default) a "
        f"daemon with root's file access serves {peer_of(request).via}"
        f" clients only files they could open themselves: {_HOW_TO}\n"
    )
