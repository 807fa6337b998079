"""The C escaper's other paths write the same bytes as the per-event encoder: the
portable one (no SSE2: aarch64 nodes, other CPUs) and the SSE2 one (x86-64 without
SSSE3, which the installed build picks at run time). The installed build on this
machine takes the SSSE3 path, so this test compiles logvold/core/_json_lines.c again
with `-U__SSE2__` and with `-DLOGVOLD_NO_SSSE3` (real gcc, real module import) and
runs the oracle comparison against those builds."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logvold.core.formats import encode_json_entry

SOURCE = Path(__file__).resolve().parents[2] / "logvold" / "core" / "_json_lines.c"
_PIECES = [
    b"a", b'"', b"\\", b"\t", b"\r", b"\x08", b"\x0c", b"\n", b"\x00", b"\x1b", b"\x1f",
    b"\x7f", b"<", b">", b"&", "\u00e9".encode(), "\u65e5".encode(), "\u2028".encode(),
    "\u2029".encode(), "\U0001f600".encode(), b"\xff", b"\xc3", b"\xe2\x80", b"\xed\xa0\x80",
    b"\xc0\xaf", b"y" * 15, b"z" * 33,
]  # fmt: skip

Escaper = Callable[[bytes, bytes], "bytes | None"]


@pytest.fixture(scope="module", params=["-U__SSE2__", "-DLOGVOLD_NO_SSSE3"])
def portable(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Escaper:
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "a C compiler is needed to build the escaper (scripts/test installs one)"
    out = tmp_path_factory.mktemp("portable") / "_json_lines.so"
    include = sysconfig.get_paths()["include"]
    done = subprocess.run(
        [gcc, "-O2", "-Wall", "-Werror", request.param, "-shared", "-fPIC", f"-I{include}",
         str(SOURCE), "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    spec = importlib.util.spec_from_file_location("_json_lines", out)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    escape: Escaper = module.escape_lines
    return escape


def _inside(line: bytes) -> bytes:
    entry = encode_json_entry("stdout", 0, line)
    return entry[len(b'{"log":"') : entry.rindex(b'","stream":"')]


@settings(max_examples=500, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.lists(st.sampled_from(_PIECES), max_size=100).map(b"".join),
    ),
    sep=st.sampled_from([b"", b"|", b"S" * 90]),
)
def test_portable_build_matches_the_per_event_encoder(
    portable: Escaper, data: bytes, sep: bytes
) -> None:
    got = portable(data, sep)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        assert got is None
        return
    assert got == sep.join(_inside(line) for line in data.split(b"\n"))


def test_portable_build_long_inputs(portable: Escaper) -> None:
    """Past the block loops' 32-byte tail and past the first output reservation (6x
    escapes, long separators): the buffer grows; a bad byte deep inside gives None."""
    text = ('caf\u00e9 \u2028 <&> "q" \\ \t\x01 \U0001f600\n' * 4000).encode()
    assert portable(text, b"|") == b"|".join(_inside(line) for line in text.split(b"\n"))
    assert portable(b"\x01" * 300_000, b"|") == b"\\u0001" * 300_000
    assert portable(b"\n" * 50_000, b"S" * 100) == b"S" * 5_000_000
    assert portable(b"x" * 100_000 + b"\xff" + b"y" * 100, b"|") is None
