"""YAML config files: line marks in messages, quoting, the example file, dumps."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logvold.config.yaml_file import (
    dump_config,
    load_config,
    load_config_text,
    main_check_config,
    parse_yaml_tree,
)
from logvold.core.config_tree import KeyPath
from logvold.core.policy import (
    Config,
    ContainerSpec,
    KubernetesConfig,
    LogPolicy,
    NodeLogQueryConfig,
    ReopenAction,
    ServerConfig,
    ServerLimits,
    VolumeSpec,
)
from logvold.core.policy_reader import POLICY_KEYS
from logvold.core.units import format_duration, format_size
from logvold.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"


def _messages(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "config.yaml")
    return [str(p) for p in info.value.problems]


# --- line-marked problems -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            """\
volumes:
  - name: web
    path: /var/log/web
    containers:
      - name: nginx
      - name: app
        policy:
          logs:
            maxSize: 10Mi
            rotate: weekly
""",
            ['config.yaml:10: volumes[0].containers[1].policy.logs.rotate: expected Hourly,'
             ' Daily, Never or a period such as 15m, got "weekly"'],
            id="rotate-in-nested-container",
        ),
        pytest.param(
            "server:\n  listen: 8642\n",
            ["config.yaml:2: server.listen: expected a string, got 8642"],
            id="listen-int",
        ),
        pytest.param(
            "defaults:\n  compress: no\n",
            ["config.yaml:2: defaults.compress: expected none, gzip or zstd, got false (YAML reads"
             " unquoted yes/no/on/off as booleans; quote the value)"],
            id="yaml-no-is-false",
        ),
        pytest.param(
            "defaults:\n  maxAge: 2026-01-01\n",
            ["config.yaml:2: defaults.maxAge: expected a duration such as 90s, 6h or 7d,"
             " got a date"],
            id="yaml-date",
        ),
        pytest.param(
            "defaults:\n  maxSize: 1Mi\n  maxSize: 2Mi\n",
            ["config.yaml:3: defaults.maxSize: duplicate key; each key may appear once"],
            id="duplicate-key",
        ),
        pytest.param(
            "1: x\n",
            ["config.yaml:1: keys must be strings, got 1"],
            id="int-key",
        ),
        pytest.param(
            "? [a]\n: b\n",
            ["config.yaml:1: keys must be strings, got a collection"],
            id="collection-key",
        ),
        pytest.param(
            "server:\n  listen: [\n",
            ["config.yaml:3: invalid YAML: expected the node content, but found '<stream end>'"
             " (while parsing a flow node)"],
            id="unclosed-flow",
        ),
        pytest.param(
            "server: {}\n\tdefaults: {}\n",
            ["config.yaml:2: invalid YAML: found character '\\t' that cannot start any token"
             " (while scanning for the next token)"],
            id="tab-indent",
        ),
        pytest.param(
            "a: 1\n---\nb: 2\n",
            ["config.yaml:2: invalid YAML: but found another document (expected a single"
             " document in the stream)"],
            id="two-documents",
        ),
        pytest.param(
            "defaults:\n  maxSize: !!python/object/apply:os.system [ls]\n",
            ["config.yaml:2: defaults.maxSize: unsupported YAML tag"
             " tag:yaml.org,2002:python/object/apply:os.system"],
            id="python-tag-collection",
        ),
        pytest.param(
            "defaults:\n  timezone: !!python/name:os.system\n",
            ["config.yaml:2: defaults.timezone: cannot read value: could not determine a"
             " constructor for the tag 'tag:yaml.org,2002:python/name:os.system'"],
            id="python-tag-scalar",
        ),
        pytest.param(
            "volumes: &v\n  - *v\n",
            # the alias is the anchored node itself, so the line is the anchor's
            ["config.yaml:1: volumes[0]: nested too deeply (a recursive alias?)"],
            id="recursive-alias",
        ),
        pytest.param(
            "defaults: []\nvolume:\n  - name: x\nlogLevel: loud\n",
            ["config.yaml:1: defaults: expected a mapping, got a list",
             "config.yaml:2: volume: unknown key; did you mean volumes?",
             'config.yaml:4: logLevel: expected debug, info, warning or error, got "loud"'],
            id="every-problem-in-line-order",
        ),
        pytest.param(
            """\
server:
  tls:
    certFile: /etc/tls/crt
volumes:
  - name: a
    path: /a
  - name: a
    path: /b
    containers:
      - name: c
      - name: c
        policy: {logs: {reopen: {signal: HUP, command: [x]}}}
""",
            ["config.yaml:2: server.tls: set both certFile and keyFile; keyFile is missing",
             'config.yaml:7: volumes[1].name: duplicate volume name "a"; first used by volumes[0]',
             'config.yaml:11: volumes[1].containers[1].name: duplicate container name "c"; first'
             " used by containers[0]",
             "config.yaml:12: volumes[1].containers[1].policy.logs.reopen: set either signal"
             " (with pidFile) or command, not both"],
            id="cross-checks",
        ),
    ],
)  # fmt: skip
def test_problem_messages(text: str, expected: list[str]) -> None:
    assert _messages(text) == expected


@pytest.mark.parametrize(
    ("yaml_value", "expected"),
    [
        pytest.param('"\\n\\n"', b"\n\n", id="double-quoted"),
        pytest.param("'\\n\\n'", b"\n\n", id="single-quoted-escapes"),
        pytest.param("'\\x1e'", b"\x1e", id="single-quoted-hex"),
        pytest.param("\\x1e", b"\x1e", id="plain-hex"),
        pytest.param('"\\x1e"', b"\x1e", id="double-quoted-hex"),
        pytest.param('"\\u2028"', "\u2028".encode(), id="unicode"),
        pytest.param("'||'", b"||", id="literal"),
        pytest.param("'\\\\'", b"\\", id="escaped-backslash"),
    ],
)
def test_delimiter_quoting_styles(yaml_value: str, expected: bytes) -> None:
    config = load_config_text(f"defaults:\n  delimiter: {yaml_value}\n", "c.yaml")
    assert config.defaults.delimiter == expected


def test_lines_point_at_keys_and_items() -> None:
    text = "# comment\nserver:\n  listen: 127.0.0.1:1\nvolumes:\n  - name: a\n    path: /a\n"
    tree, lines = parse_yaml_tree(text, "c.yaml")
    assert tree == {"server": {"listen": "127.0.0.1:1"}, "volumes": [{"name": "a", "path": "/a"}]}
    assert lines[("server",)] == 2
    assert lines[("server", "listen")] == 3
    assert lines[("volumes", 0)] == 5
    assert lines[("volumes", 0, "path")] == 6


def test_merge_keys_apply_and_own_keys_win_without_duplicate_errors() -> None:
    text = """\
x-base: &base
  rotate: Daily
  maxFiles: 3
defaults:
  <<: *base
  rotate: Hourly
"""
    config = load_config_text(text, "c.yaml")
    assert (config.defaults.rotate, config.defaults.max_files) == ("Hourly", 3)


@pytest.mark.parametrize(
    "text",
    [pytest.param("", id="empty"), pytest.param("# only comments\n", id="comments"),
     pytest.param("\ufeff", id="bom")],
)  # fmt: skip
def test_empty_file_is_the_built_in_defaults_without_volumes(text: str) -> None:
    assert load_config_text(text, "c.yaml") == Config(source="c.yaml")


def test_byte_order_mark_is_ignored() -> None:
    config = load_config_text("\ufeffdefaults: {maxFiles: 2}\n", "c.yaml")
    assert config.defaults.max_files == 2


def test_load_config_reads_file_and_records_source(tmp_path: Path) -> None:
    path = tmp_path / "logvold.yaml"
    path.write_text("volumes: [{name: a, path: /a}]\n", encoding="utf-8")
    config = load_config(path)
    assert config.source == str(path)
    assert config.volumes == (VolumeSpec(name="a", path="/a"),)


def test_load_config_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}: cannot read: No such file or directory"
    ]


def test_load_config_rejects_non_utf8_with_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"defaults:\n  annotations: {owner: J\xfcrgen}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:2: not UTF-8 text (byte 0xfc); save the file as UTF-8"
    ]


# --- the example file ---------------------------------------------------------------------------


def _yaml_key(field_name: str) -> str:
    name = field_name.removesuffix("_bytes").removesuffix("_s")
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def test_example_loads_cleanly() -> None:
    config = load_config(EXAMPLE)
    assert config.volumes, "the example should show a static volume"
    assert config.volumes[0].containers, "the example should show per-container policies"


def test_example_documents_every_log_policy_field() -> None:
    tree, _ = parse_yaml_tree(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
    assert isinstance(tree, dict)
    expected = [_yaml_key(f.name) for f in dataclasses.fields(LogPolicy)]
    assert expected == list(POLICY_KEYS)
    assert list(tree["defaults"]) == expected


@pytest.mark.parametrize(
    ("section", "model", "renames"),
    [
        pytest.param("kubernetes", KubernetesConfig, {}, id="kubernetes"),
        pytest.param("nodeLogQuery", NodeLogQueryConfig, {"max": "maxBytes"}, id="nodeLogQuery"),
        pytest.param(
            "server",
            ServerConfig,
            {"tlsCertFile": "tls.certFile", "tlsKeyFile": "tls.keyFile", "auth": "auth.mode",
             "authCacheTtl": "auth.cacheTTL", "socketPath": "socket.path",
             "socketMode": "socket.mode", "socketGroup": "socket.group"},
            id="server",
        ),
        pytest.param(
            "server",
            ServerLimits,
            {"headerTimeout": "limits.headerTimeout", "maxConnections": "limits.maxConnections",
             "maxFollowers": "limits.maxFollowers",
             "maxFollowersPerStream": "limits.maxFollowersPerStream",
             "maxHeavyReads": "limits.maxHeavyReads"},
            id="server.limits",
        ),
    ],
)  # fmt: skip
def test_example_documents_every_section_key(
    section: str, model: type[Any], renames: dict[str, str]
) -> None:
    tree, _ = parse_yaml_tree(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
    assert isinstance(tree, dict)
    for field in dataclasses.fields(model):
        key = renames.get(_yaml_key(field.name), _yaml_key(field.name))
        node: Any = tree[section]
        for part in key.split("."):
            assert part in node, f"{section}.{key} missing from config.example.yaml"
            node = node[part]


def test_example_documents_every_top_level_and_volume_key() -> None:
    tree, _ = parse_yaml_tree(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
    assert isinstance(tree, dict)
    top = {_yaml_key(f.name) for f in dataclasses.fields(Config)} - {"source"}
    assert set(tree) == {*top}
    volume_keys = {_yaml_key(f.name) for f in dataclasses.fields(VolumeSpec)}
    assert set(tree["volumes"][0]) == volume_keys
    container_keys = {_yaml_key(f.name) for f in dataclasses.fields(ContainerSpec)}
    assert set(tree["volumes"][0]["containers"][0]) == container_keys


def test_every_documented_key_has_a_comment() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    source_lines = text.splitlines()
    _, lines = parse_yaml_tree(text, str(EXAMPLE))
    undocumented = []
    for path, line in lines.items():
        if not path or "containers" in path or isinstance(path[-1], int):
            continue  # list items and the per-container examples show usage
        own = source_lines[line - 1]
        above = source_lines[line - 2].strip() if line >= 2 else ""
        if "#" not in own and not above.startswith("#"):
            undocumented.append(f"{line}: {own.strip()}")
    assert undocumented == []


# --- dump ---------------------------------------------------------------------------------------


def test_dump_of_example_loads_back_equal() -> None:
    config = load_config(EXAMPLE)
    dumped = dump_config(config)
    assert dumped.startswith(f"# logvold effective config (from {EXAMPLE})\n")
    assert load_config_text(dumped, str(EXAMPLE)) == config


def test_dump_lists_only_container_overrides() -> None:
    config = load_config_text(
        "defaults: {maxFiles: 2}\nvolumes: [{name: a, path: /a, containers: [{name: c,"
        " policy: {logs: {maxFiles: 3}}}, {name: d}]}]\n",
        "c.yaml",
    )
    tree, _ = parse_yaml_tree(dump_config(config), "dump")
    assert isinstance(tree, dict)
    assert tree["volumes"][0]["containers"] == [
        {"name": "c", "policy": {"logs": {"maxFiles": 3}}},
        {"name": "d"},
    ]
    assert len(tree["defaults"]) == len(POLICY_KEYS)


_names = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\ufeff"),
    max_size=12,
)


@st.composite
def _policies(draw: st.DrawFn) -> LogPolicy:
    fmt = draw(st.sampled_from(["raw", "cri", "json-file"]))
    delimiter = (
        draw(
            st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=4)
        ).encode()
        if fmt == "raw"
        else b"\n"
    )
    reopen = draw(
        st.one_of(
            st.none(),
            st.builds(ReopenAction, signal=st.sampled_from(["HUP", "USR1", "TERM"]),
                      pid_file=st.just("/run/app.pid")),
            st.builds(ReopenAction, command=st.lists(_names, min_size=1, max_size=3).map(tuple)),
        )
    )  # fmt: skip
    return LogPolicy(
        sub_dir=draw(st.sampled_from(["", "logs", "a/b"])),
        rotate=draw(st.sampled_from(["Hourly", "Daily", "Never"])),
        max_size_bytes=draw(st.integers(0, 2**50)),
        max_files=draw(st.integers(0, 10_000)),
        max_age_s=draw(st.floats(0, 1e10, allow_nan=False)),
        max_total_size_bytes=draw(st.integers(0, 2**50)),
        compress=draw(st.sampled_from(["none", "gzip", "zstd"])),
        delay_compress=draw(st.booleans()),
        format=fmt,  # type: ignore[arg-type]
        delimiter=delimiter,
        max_event_size_bytes=draw(st.integers(16, 2**40)),
        strategy=draw(st.sampled_from(["punch", "rename", "copytruncate"])),
        collapse=draw(st.sampled_from(["auto", "always", "never"])),
        reopen=reopen,
        timezone=draw(st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"])),
        annotations=draw(st.dictionaries(_text, _text, max_size=3)),
    )


@st.composite
def _configs(draw: st.DrawFn) -> Config:
    defaults = draw(_policies())
    volume_names = draw(st.lists(_names, max_size=3, unique=True))
    volumes = []
    for name in volume_names:
        container_names = draw(st.lists(_names, max_size=3, unique=True))
        containers = tuple(
            ContainerSpec(
                name=c, file=f"{c}.log", policy=draw(st.one_of(st.just(defaults), _policies()))
            )
            for c in container_names
        )
        volumes.append(
            VolumeSpec(
                name=name,
                path=f"/var/log/{name}",
                pod=draw(st.sampled_from(["", f"pod-{name}"])),
                namespace=draw(st.sampled_from(["default", "kube-system"])),
                containers=containers,
                max_total_size_bytes=draw(st.integers(0, 2**40)),
            )
        )
    return Config(
        server=ServerConfig(
            listen=draw(st.sampled_from(["127.0.0.1:8642", "[::]:1", "node.local:443"])),
            auth=draw(st.sampled_from(["local", "none", "kubernetes"])),
            auth_cache_ttl_s=draw(st.floats(0, 1e6, allow_nan=False)),
            socket_path=draw(st.sampled_from(["", "/run/logvold/logvold.sock"])),
            socket_mode=draw(st.sampled_from([0o600, 0o660])),
            socket_group=draw(st.sampled_from(["", "adm"])),
            limits=ServerLimits(
                header_timeout_s=draw(st.floats(0.001, 1e6, allow_nan=False)),
                max_connections=draw(st.integers(1, 10**6)),
                max_followers=draw(st.integers(1, 10**6)),
                max_followers_per_stream=draw(st.integers(1, 10**6)),
                max_heavy_reads=draw(st.integers(1, 10**6)),
            ),
        ),
        defaults=defaults,
        volumes=tuple(volumes),
        kubernetes=KubernetesConfig(enabled=draw(st.booleans()), node_name=draw(_names)),
        node_log_query=NodeLogQueryConfig(
            journal=draw(st.sampled_from(["auto", "always", "never"])),
            timeout_s=draw(st.floats(0.001, 1e6, allow_nan=False)),
            max_bytes=draw(st.integers(1, 2**40)),
        ),
        node_max_total_size_bytes=draw(st.integers(0, 2**50)),
        rescan_interval_s=draw(st.floats(0.001, 1e6, allow_nan=False)),
        log_format=draw(st.sampled_from(["logfmt", "json"])),
        log_level=draw(st.sampled_from(["debug", "info", "warning", "error"])),
        source="generated.yaml",
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_configs())
def test_any_valid_config_survives_dump_and_load(config: Config) -> None:
    assert load_config_text(dump_config(config), "generated.yaml") == config


@settings(deadline=None)  # parses YAML per example: timing depends on machine load
@given(st.integers(0, 2**62), st.floats(0, 1e9, allow_nan=False))
def test_sizes_and_durations_round_trip_through_yaml(num_bytes: int, seconds: float) -> None:
    text = f"defaults:\n  maxSize: {format_size(num_bytes)}\n  maxAge: {format_duration(seconds)}\n"
    config = load_config_text(text, "c.yaml")
    assert config.defaults.max_size_bytes == num_bytes
    assert config.defaults.max_age_s == seconds


# --- check-config in process ----------------------------------------------------------------------


def test_check_config_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The example's volume moved to a directory that exists, judged by no systemd unit:
    # nothing to warn about on this host (tests/unit/test_host_checks.py has the warnings).
    monkeypatch.setenv("LOGVOLD_SYSTEMD_UNIT", "")
    example = tmp_path / "config.yaml"
    example.write_text(EXAMPLE.read_text().replace("/var/log/pods-static/web", str(tmp_path)))
    assert main_check_config([str(example)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"OK: {example}"
    assert re.match(r"1 volume, 2 streams, kubernetes discovery off", out.splitlines()[1])
    assert err == ""


def test_check_config_lists_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("defaults:\n  rotate: weekly\n  maxFiles: -1\n", encoding="utf-8")
    assert main_check_config([str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}:2: defaults.rotate: expected Hourly, Daily, Never or a period such as 15m,"
        ' got "weekly"',
        f"{path}:3: defaults.maxFiles: must not be negative, got -1",
        f"check-config: 2 problems in {path}",
    ]


@pytest.mark.parametrize(
    "argv",
    [pytest.param([], id="none"), pytest.param(["a", "b"], id="two"),
     pytest.param(["--strict"], id="unknown-option")],
)  # fmt: skip
def test_check_config_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main_check_config(argv) == 2
    assert capsys.readouterr().err.startswith("usage: logvold check-config FILE")


def test_check_config_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("volumes: [{name: a, path: /a}]\n"))
    assert main_check_config(["-"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: <stdin>\n1 volume, 0 streams (+ every *.log in 1 volume")


def test_lines_cover_only_real_paths() -> None:
    _, lines = parse_yaml_tree("a:\n  b: [1, 2]\n", "c.yaml")
    expected: dict[KeyPath, int] = {
        (): 1,
        ("a",): 1,
        ("a", "b"): 2,
        ("a", "b", 0): 2,
        ("a", "b", 1): 2,
    }
    assert lines == expected


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ["x-0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    for level in range(1, 10):  # 10**10 values once expanded
        lines.append(f"x-{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    messages = _messages("\n".join(lines) + "\n")
    assert len(messages) == 1
    assert messages[0].endswith(": more than 200000 values once aliases are expanded")


@pytest.mark.parametrize("text", ["\x85", "a\u2028b", "\u2029", "J\u00fcrgen"])
def test_dump_keeps_unicode_line_breaks_in_annotations(text: str) -> None:
    config = Config(defaults=LogPolicy(annotations={text: text}), source="c.yaml")
    assert load_config_text(dump_config(config), "c.yaml") == config
