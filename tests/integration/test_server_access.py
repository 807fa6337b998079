"""server/access.py on real files and sockets: the mode-bit check a non-trusted peer gets,
the uid of a TCP client found in /proc/net/tcp, and who is trusted when."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from logvold.core.policy import AuthMode, ServerConfig
from logvold.server.access import (
    TRUSTED,
    Peer,
    make_access_middleware,
    may_open,
    may_read_files,
    tcp_peer,
    tcp_peer_uid,
)

ALICE = Peer(trusted=False, uid=4242, gids=frozenset({4343}))
ANYONE = Peer(trusted=False)


def _file(path: Path, mode: int, uid: int = 0, gid: int = 0) -> Path:
    path.write_bytes(b"x\n")
    path.chmod(mode)
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to other users needs root")
def test_mode_bits_for_owner_group_other_and_directories() -> None:
    # pytest's tmp_path sits in a 0700 directory: use one every user may search.
    tmp_path = Path(tempfile.mkdtemp(prefix="logvold-access-", dir="/tmp"))
    try:
        tmp_path.chmod(0o755)
        _check_mode_bits(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _check_mode_bits(tmp_path: Path) -> None:
    own = _file(tmp_path / "own.log", 0o600, uid=4242)
    group = _file(tmp_path / "group.log", 0o640, gid=4343)
    other = _file(tmp_path / "other.log", 0o644)
    root_only = _file(tmp_path / "root.log", 0o600)
    assert may_open(ALICE, own) is None
    assert may_open(ALICE, group) is None
    assert may_open(ALICE, other) is None
    assert "not readable by uid 4242" in (may_open(ALICE, root_only) or "")
    assert may_open(ANYONE, other) is None
    for path in (own, group, root_only):
        assert may_open(ANYONE, path) is not None
        assert may_open(TRUSTED, path) is None
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    inside = _file(hidden / "in.log", 0o644)
    assert "not searchable" in (may_open(ALICE, inside) or "")
    assert may_read_files(ALICE, tmp_path, ["own.log", "other.log", "gone.log"]) is None
    assert may_read_files(ALICE, tmp_path, ["own.log", "root.log"]) is not None


def test_tcp_client_uid_is_found_in_proc_net_tcp() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname()) as client:
            conn, _ = server.accept()
            with conn:
                uid = tcp_peer_uid(conn.getsockname(), conn.getpeername())
                assert uid == os.geteuid()
                assert tcp_peer(conn.getsockname(), conn.getpeername()).trusted
                # A 4-tuple no socket of this namespace has: an anonymous client.
                assert tcp_peer_uid(conn.getsockname(), ("127.0.0.1", 1)) is None
                assert client.getsockname() == conn.getpeername()


def test_ipv4_client_of_a_dual_stack_listener_is_found_too() -> None:
    with socket.socket(socket.AF_INET6) as server:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind(("::", 0))
        server.listen(1)
        with socket.create_connection(("127.0.0.1", server.getsockname()[1])):
            conn, _ = server.accept()
            with conn:
                assert conn.getpeername()[0] == "::ffff:127.0.0.1"
                assert tcp_peer_uid(conn.getsockname(), conn.getpeername()) == os.geteuid()


@pytest.mark.asyncio
async def test_unprivileged_daemon_trusts_tcp_clients_and_explicit_modes_too() -> None:
    """The README's case: a daemon without root's file access can only read what its user
    can, so nothing is checked; `none` and `kubernetes` keep today's behaviour."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request  # no server: a middleware's input
    from aiohttp.typedefs import Middleware

    from logvold.server.access import PEER_KEY

    seen: list[Peer] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request[PEER_KEY])
        return web.Response()

    async def through(middleware: Middleware) -> web.StreamResponse:
        return await middleware(make_mocked_request("GET", "/logs/"), handler)

    cases: tuple[tuple[AuthMode, bool], ...] = (
        ("local", False),
        ("none", True),
        ("kubernetes", True),
    )
    for auth, privileged in cases:
        await through(make_access_middleware(ServerConfig(auth=auth), privileged=privileged))
    await through(make_access_middleware(ServerConfig(), privileged=True))
    assert [p.trusted for p in seen] == [True, True, True, False]
