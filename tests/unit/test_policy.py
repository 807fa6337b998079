"""The policy model and its converters from plain trees (no YAML parsing here)."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logvold.core.config_tree import KeyPath, describe_value, format_key
from logvold.core.policy import (
    Config,
    ContainerSpec,
    LogPolicy,
    ReopenAction,
    VolumeSpec,
    default_config,
)
from logvold.core.policy_reader import POLICY_KEYS, config_from_tree, policy_from_mapping
from logvold.core.values import decode_escapes
from logvold.errors import ConfigError

POLICY_PATH: KeyPath = ("volumes", 0, "containers", 0, "policy", "logs")


def _policy(tree: object, base: LogPolicy | None = None) -> LogPolicy:
    return policy_from_mapping(
        tree, file="config.yaml", lines={}, key_prefix=POLICY_PATH, base=base or LogPolicy()
    )


def _policy_messages(tree: object, lines: dict[KeyPath, int] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        policy_from_mapping(
            tree, file="config.yaml", lines=lines or {}, key_prefix=("defaults",), base=LogPolicy()
        )
    return [str(p) for p in info.value.problems]


def _config_messages(tree: object, lines: dict[KeyPath, int] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_tree(tree, file="config.yaml", lines=lines or {})
    return [str(p) for p in info.value.problems]


def _volume(**extra: Any) -> dict[str, Any]:
    return {"name": "web", "path": "/var/log/web", **extra}


# --- the model ------------------------------------------------------------------------------


def test_log_policy_defaults_are_the_pinned_ones() -> None:
    p = LogPolicy()
    assert (p.sub_dir, p.rotate, p.max_size_bytes, p.max_files, p.max_age_s) == (
        "", "Never", 10 * 2**20, 5, 0.0,
    )  # fmt: skip
    assert (p.max_total_size_bytes, p.compress, p.delay_compress, p.format) == (
        0,
        "none",
        True,
        "raw",
    )
    assert (p.delimiter, p.max_event_size_bytes, p.strategy, p.collapse) == (
        b"\n", 2**20, "punch", "never",
    )  # fmt: skip
    assert (p.reopen, p.timezone, dict(p.annotations)) == (None, "UTC", {})


def test_models_are_frozen_and_keyword_only() -> None:
    policy = LogPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_files = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        cast(Any, VolumeSpec)("web", "/x")  # positional fields are what is refused here
    assert LogPolicy().annotations is not LogPolicy().annotations  # no shared mutable default


def test_default_config_is_one_local_volume_on_loopback() -> None:
    config = default_config("/tmp/logs")
    assert config.volumes == (VolumeSpec(name="local", path="/tmp/logs"),)
    assert config.volumes[0].containers == ()
    assert config.server.listen.startswith("127.0.0.1:")
    assert config.server.auth == "local"
    assert config.kubernetes.enabled is False
    assert default_config().volumes[0].path == "./logs"


def test_every_policy_field_has_a_yaml_key() -> None:
    assert len(POLICY_KEYS) == len(dataclasses.fields(LogPolicy))


# --- policy_from_mapping: accepted values ---------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "field", "expected"),
    [
        pytest.param("subDir", "logs/app", "sub_dir", "logs/app", id="subDir"),
        pytest.param("subDir", "./logs/", "sub_dir", "logs", id="subDir-normalised"),
        pytest.param("subDir", ".", "sub_dir", "", id="subDir-dot"),
        pytest.param("rotate", "Hourly", "rotate", "Hourly", id="rotate"),
        pytest.param("rotate", "15m", "rotate", "900s", id="rotate-period"),
        pytest.param("rotate", "1h30m", "rotate", "5400s", id="rotate-period-compound"),
        pytest.param("rotate", 30, "rotate", "30s", id="rotate-period-seconds"),
        pytest.param("maxSize", "20Mi", "max_size_bytes", 20 * 2**20, id="maxSize"),
        pytest.param("maxSize", 0, "max_size_bytes", 0, id="maxSize-zero"),
        pytest.param("maxSize", 4096.0, "max_size_bytes", 4096, id="maxSize-whole-float"),
        pytest.param("maxFiles", 0, "max_files", 0, id="maxFiles-unlimited"),
        pytest.param("maxAge", "7d", "max_age_s", 604800.0, id="maxAge"),
        pytest.param("maxAge", 90, "max_age_s", 90.0, id="maxAge-seconds"),
        pytest.param("maxTotalSize", "1Gi", "max_total_size_bytes", 2**30, id="maxTotalSize"),
        pytest.param("compress", "zstd", "compress", "zstd", id="compress"),
        pytest.param("delayCompress", False, "delay_compress", False, id="delayCompress"),
        pytest.param("format", "json-file", "format", "json-file", id="format"),
        pytest.param("delimiter", "\n\n", "delimiter", b"\n\n", id="delimiter-unescaped"),
        pytest.param("delimiter", "\\x1e", "delimiter", b"\x1e", id="delimiter-escaped"),
        pytest.param("delimiter", "\\r\\n", "delimiter", b"\r\n", id="delimiter-crlf"),
        pytest.param("delimiter", "\u2028", "delimiter", "\u2028".encode(), id="delimiter-utf8"),
        pytest.param("maxEventSize", "4Mi", "max_event_size_bytes", 4 * 2**20, id="maxEventSize"),
        pytest.param("strategy", "copytruncate", "strategy", "copytruncate", id="strategy"),
        pytest.param("collapse", "never", "collapse", "never", id="collapse"),
        pytest.param("timezone", "Europe/Berlin", "timezone", "Europe/Berlin", id="timezone"),
        pytest.param(
            "annotations", {"team": "web"}, "annotations", {"team": "web"}, id="annotations"
        ),
        pytest.param("annotations", None, "annotations", {}, id="annotations-null"),
        pytest.param(
            "reopen", {"signal": "SIGhup", "pidFile": "/run/a.pid"}, "reopen",
            ReopenAction(signal="HUP", pid_file="/run/a.pid"), id="reopen-signal",
        ),
        pytest.param(
            "reopen", {"signal": 10, "pidFile": "/run/a.pid"}, "reopen",
            ReopenAction(signal="USR1", pid_file="/run/a.pid"), id="reopen-signal-number",
        ),
        pytest.param(
            "reopen", {"command": ["nginx", "-s", "reopen"]}, "reopen",
            ReopenAction(command=("nginx", "-s", "reopen")), id="reopen-command",
        ),
        pytest.param("reopen", None, "reopen", None, id="reopen-null"),
    ],
)  # fmt: skip
def test_policy_key_sets_field(key: str, value: object, field: str, expected: object) -> None:
    policy = _policy({key: value})
    assert getattr(policy, field) == expected
    untouched = {f.name for f in dataclasses.fields(LogPolicy)} - {field}
    assert all(getattr(policy, name) == getattr(LogPolicy(), name) for name in untouched)


def test_policy_overrides_base_key_by_key() -> None:
    base = LogPolicy(max_files=9, compress="gzip", rotate="Daily")
    policy = _policy({"rotate": "Hourly"}, base)
    assert (policy.rotate, policy.max_files, policy.compress) == ("Hourly", 9, "gzip")


@pytest.mark.parametrize("tree", [pytest.param(None, id="null"), pytest.param({}, id="empty")])
def test_empty_policy_is_the_base(tree: object) -> None:
    base = LogPolicy(max_files=1)
    assert _policy(tree, base) == base


# --- policy_from_mapping: problems ----------------------------------------------------------


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        pytest.param(
            {"rotate": "weekly"},
            'defaults.rotate: expected Hourly, Daily, Never or a period such as 15m, got'
            ' "weekly"',
            id="rotate-unknown",
        ),
        pytest.param(
            {"rotate": "daily"},
            'defaults.rotate: expected Hourly, Daily, Never or a period such as 15m, got'
            ' "daily"; did you mean Daily?',
            id="rotate-case",
        ),
        pytest.param(
            {"rotate": "1.5s"},
            'defaults.rotate: a rotation period must be whole seconds, at least 1s, got "1.5s"',
            id="rotate-period-fraction",
        ),
        pytest.param(
            {"rotate": "0s"},
            'defaults.rotate: a rotation period must be whole seconds, at least 1s, got "0s"',
            id="rotate-period-zero",
        ),
        pytest.param(
            {"compress": False},
            "defaults.compress: expected none, gzip or zstd, got false (YAML reads unquoted"
            " yes/no/on/off as booleans; quote the value)",
            id="compress-yaml-no",
        ),
        pytest.param({"maxsize": "1Mi"}, "defaults.maxsize: unknown key; did you mean maxSize?",
                     id="unknown-key-case"),
        pytest.param({"maxFile": 3}, "defaults.maxFile: unknown key; did you mean maxFiles?",
                     id="unknown-key-typo"),
        pytest.param({"maxSize": "-1Mi"},
                     "defaults.maxSize: expected a size such as 10Mi, 512Ki, 1G or 1048576,"
                     ' got \'-1Mi\'', id="negative-size"),
        pytest.param({"maxSize": -5}, "defaults.maxSize: size must not be negative, got -5",
                     id="negative-size-int"),
        pytest.param({"maxSize": [1]},
                     "defaults.maxSize: expected a size such as 10Mi, 512Ki or 1G, got a list",
                     id="size-list"),
        pytest.param({"maxSize": True},
                     "defaults.maxSize: expected a size such as 10Mi, 512Ki or 1G, got true",
                     id="size-bool"),
        pytest.param({"maxFiles": -1}, "defaults.maxFiles: must not be negative, got -1",
                     id="negative-count"),
        pytest.param({"maxFiles": "5"}, 'defaults.maxFiles: expected a whole number, got "5"',
                     id="count-string"),
        pytest.param({"maxAge": "7 days"},
                     "defaults.maxAge: expected a duration such as 90s, 6h or 7d, got '7 days'",
                     id="bad-duration"),
        pytest.param({"maxEventSize": 0}, "defaults.maxEventSize: must be greater than 0",
                     id="maxEventSize-zero"),
        pytest.param({"delimiter": ""},
                     'defaults.delimiter: must not be empty; the default is "\\n"',
                     id="empty-delimiter"),
        pytest.param({"delimiter": "\\q"},
                     "defaults.delimiter: unknown escape \\q; use \\n, \\r, \\t, \\0,"
                     " \\\\ or \\xHH",
                     id="bad-escape"),
        pytest.param({"delimiter": 10}, "defaults.delimiter: expected a string, got 10",
                     id="delimiter-int"),
        pytest.param({"delimiter": "||", "format": "cri"},
                     "defaults.delimiter: delimiter applies only to format raw; cri frames events"
                     " itself", id="delimiter-with-cri"),
        pytest.param({"delimiter": "\\n\\n\\n", "maxEventSize": 2},
                     "defaults.maxEventSize: maxEventSize must be at least the delimiter's length",
                     id="event-shorter-than-delimiter"),
        pytest.param({"timezone": "Europe/Berln"},
                     'defaults.timezone: unknown time zone "Europe/Berln"; did you mean'
                     " Europe/Berlin?", id="bad-timezone"),
        pytest.param({"timezone": "../../etc/passwd"},
                     'defaults.timezone: unknown time zone "../../etc/passwd"; use an IANA name'
                     " such as Europe/Berlin", id="timezone-path"),
        pytest.param({"subDir": "/var/log"},
                     'defaults.subDir: must be a directory inside the volume, got "/var/log"',
                     id="absolute-subDir"),
        pytest.param({"subDir": "a/../../b"},
                     'defaults.subDir: must be a directory inside the volume, got "a/../../b"',
                     id="escaping-subDir"),
        pytest.param({"reopen": {"signal": "HUP", "command": ["x"]}},
                     "defaults.reopen: set either signal (with pidFile) or command, not both",
                     id="reopen-both"),
        pytest.param({"reopen": {"signal": "HUP"}},
                     "defaults.reopen: signal needs pidFile: the file holding the writer's pid",
                     id="reopen-signal-without-pid"),
        pytest.param({"reopen": {"pidFile": "/run/x.pid"}},
                     "defaults.reopen: pidFile needs signal, e.g. signal: HUP",
                     id="reopen-pid-without-signal"),
        pytest.param({"reopen": {}}, "defaults.reopen: set signal and pidFile, or command",
                     id="reopen-empty"),
        pytest.param({"reopen": {"signal": "HUPP", "pidFile": "/p"}},
                     "defaults.reopen.signal: expected a signal name such as HUP or USR1,"
                     ' got "HUPP"',
                     id="reopen-bad-signal"),
        pytest.param({"reopen": {"command": "nginx -s reopen"}},
                     "defaults.reopen.command: expected a non-empty list of arguments such as"
                     ' [nginx, -s, reopen] (no shell), got "nginx -s reopen"',
                     id="reopen-command-string"),
        pytest.param({"annotations": {"team": 42}},
                     "defaults.annotations.team: expected a string, got 42 (quote it)",
                     id="annotation-int"),
        pytest.param(["rotate"], "defaults: expected a mapping, got a list", id="not-a-mapping"),
        pytest.param({1: "x"}, "defaults: keys must be strings, got 1", id="int-key"),
    ],
)  # fmt: skip
def test_policy_problem_message(tree: object, expected: str) -> None:
    assert _policy_messages(tree) == [f"config.yaml: {expected}"]


def test_policy_problems_carry_lines_and_are_all_collected() -> None:
    lines: dict[KeyPath, int] = {
        ("defaults",): 4,
        ("defaults", "rotate"): 5,
        ("defaults", "maxFiles"): 6,
        ("defaults", "bogus"): 7,
    }
    messages = _policy_messages({"rotate": "weekly", "maxFiles": -2, "bogus": 1}, lines)
    assert messages == [
        "config.yaml:5: defaults.rotate: expected Hourly, Daily, Never or a period such as"
        ' 15m, got "weekly"',
        "config.yaml:6: defaults.maxFiles: must not be negative, got -2",
        "config.yaml:7: defaults.bogus: unknown key; expected one of " + ", ".join(POLICY_KEYS),
    ]


def test_problem_without_own_line_uses_the_nearest_enclosing_one() -> None:
    messages = _policy_messages({"reopen": {"signal": "HUP"}}, {("defaults", "reopen"): 9})
    assert messages == [
        "config.yaml:9: defaults.reopen: signal needs pidFile: the file holding the writer's pid"
    ]


def test_annotation_prefix_names_the_annotation() -> None:
    prefix: KeyPath = ("metadata", "annotations", "logvold.io/logs", "logs", "app")
    with pytest.raises(ConfigError) as info:
        policy_from_mapping(
            {"maxSize": "big"},
            file="pod default/web",
            lines={},
            key_prefix=prefix,
            base=LogPolicy(),
        )
    (problem,) = info.value.problems
    assert problem.key == 'metadata.annotations["logvold.io/logs"].logs.app.maxSize'
    assert problem.file == "pod default/web"
    assert problem.line is None


# --- config_from_tree -------------------------------------------------------------------------


def test_empty_document_is_all_defaults() -> None:
    config = config_from_tree(None, file="c.yaml", lines={})
    assert config == Config(source="c.yaml")


def test_full_tree_converts_every_section() -> None:
    tree = {
        "server": {
            "listen": "[::1]:9000",
            "tls": {"certFile": "/tls/crt", "keyFile": "/tls/key"},
            "auth": {"mode": "kubernetes", "cacheTTL": "1m"},
        },
        "defaults": {"maxFiles": 3, "subDir": "logs"},
        "volumes": [
            _volume(
                pod="web-0",
                namespace="shop",
                maxTotalSize="1Gi",
                containers=[
                    {
                        "name": "nginx",
                        "file": "access.log",
                        "policy": {"logs": {"rotate": "Daily"}},
                    },
                    {"name": "app"},
                ],
            )
        ],
        "kubernetes": {
            "enabled": True, "nodeName": "n1", "annotationKey": "example.com/logs",
            "kubeletRoot": "/data/kubelet", "kubeconfig": "/etc/kube.conf",
        },
        "nodeLogQuery": {
            "enabled": False, "journal": "never", "journalDirectory": "/j", "logDir": "/logs",
            "timeout": "5s", "maxBytes": "1Mi",
        },
        "nodeMaxTotalSize": "10Gi",
        "rescanInterval": "10s",
        "logFormat": "json",
        "logLevel": "DEBUG",
        "x-anchors": {"anything": ["goes"]},
    }  # fmt: skip
    config = config_from_tree(tree, file="c.yaml", lines={})
    assert config.source == "c.yaml"
    assert (config.server.listen, config.server.tls_cert_file, config.server.tls_key_file) == (
        "[::1]:9000", "/tls/crt", "/tls/key",
    )  # fmt: skip
    assert (config.server.auth, config.server.auth_cache_ttl_s) == ("kubernetes", 60.0)
    assert config.defaults == LogPolicy(max_files=3, sub_dir="logs")
    (volume,) = config.volumes
    assert (volume.name, volume.path, volume.pod, volume.namespace) == (
        "web", "/var/log/web", "web-0", "shop",
    )  # fmt: skip
    assert volume.max_total_size_bytes == 2**30
    nginx, app = volume.containers
    assert nginx == ContainerSpec(
        name="nginx",
        file="access.log",
        policy=LogPolicy(max_files=3, sub_dir="logs", rotate="Daily"),
    )
    assert app == ContainerSpec(name="app", file="app.log", policy=config.defaults)
    k8s = config.kubernetes
    assert (k8s.enabled, k8s.node_name, k8s.annotation_key, k8s.kubelet_root, k8s.kubeconfig) == (
        True, "n1", "example.com/logs", "/data/kubelet", "/etc/kube.conf",
    )  # fmt: skip
    nlq = config.node_log_query
    assert (nlq.enabled, nlq.journal, nlq.journal_directory, nlq.log_dir) == (
        False, "never", "/j", "/logs",
    )  # fmt: skip
    assert (nlq.timeout_s, nlq.max_bytes) == (5.0, 2**20)
    assert config.node_max_total_size_bytes == 10 * 2**30
    assert (config.rescan_interval_s, config.log_format, config.log_level) == (
        10.0,
        "json",
        "debug",
    )


@pytest.mark.parametrize(
    "listen",
    [
        "127.0.0.1:8642",
        "0.0.0.0:0",
        "[::1]:65535",
        "[::]:80",
        "node-1.example.com:443",
        "localhost:1",
    ],
)
def test_listen_accepts_host_port(listen: str) -> None:
    assert (
        config_from_tree({"server": {"listen": listen}}, file="c", lines={}).server.listen == listen
    )


@pytest.mark.parametrize(
    "listen", ["8642", ":8642", "host:", "host:65536", "[::1:80", "[zz]:80", "a b:1", "host:-1"]
)
def test_listen_rejects_non_host_port(listen: str) -> None:
    (message,) = _config_messages({"server": {"listen": listen}}, {("server", "listen"): 2})
    assert message.startswith("config.yaml:2: server.listen: expected host:port such as")
    assert message.endswith(f'got "{listen}"')


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        pytest.param(
            {"server": {"tls": {"certFile": "/c"}}},
            ["config.yaml: server.tls: set both certFile and keyFile; keyFile is missing"],
            id="tls-cert-without-key",
        ),
        pytest.param(
            {"server": {"tls": {"keyFile": "/k", "certFile": ""}}},
            ["config.yaml: server.tls: set both certFile and keyFile; certFile is missing"],
            id="tls-key-without-cert",
        ),
        pytest.param(
            {"server": {"auth": {"mode": "token"}}},
            ['config.yaml: server.auth.mode: expected local, none or kubernetes, got "token"'],
            id="auth-mode",
        ),
        pytest.param(
            {"volumes": [_volume(), _volume(path="/other")]},
            ['config.yaml: volumes[1].name: duplicate volume name "web"; first used by volumes[0]'],
            id="duplicate-volume",
        ),
        pytest.param(
            {"volumes": [_volume(), _volume(name="web2", path="/var/log/web/")]},
            ["config.yaml: volumes[1].path: same path as volumes[0]; two volumes would rotate"
             " the same files"],
            id="duplicate-path",
        ),
        pytest.param(
            {"volumes": [_volume(containers=[{"name": "a"}, {"name": "a", "file": "b.log"}])]},
            ['config.yaml: volumes[0].containers[1].name: duplicate container name "a"; first'
             " used by containers[0]"],
            id="duplicate-container",
        ),
        pytest.param(
            {"volumes": [_volume(containers=[{"name": "a", "policy": {"logs": {"rotate": "x"}}},
                                             {"name": "a"}])]},
            ['config.yaml: volumes[0].containers[0].policy.logs.rotate: expected Hourly, Daily'
             ', Never or a period such as 15m, got "x"',
             'config.yaml: volumes[0].containers[1].name: duplicate container name "a"; first'
             " used by containers[0]"],
            id="duplicate-container-reported-even-if-first-is-bad",
        ),
        pytest.param(
            {"volumes": [_volume(containers=[{"name": "a", "file": "b.log"}, {"name": "b"}])]},
            ['config.yaml: volumes[0].containers[1]: active file "b.log" is also used by'
             " containers[0]"],
            id="duplicate-file",
        ),
        pytest.param(
            {"volumes": [_volume(pod="p", containers=[{"name": "a"}]),
                         _volume(name="w2", path="/w2", pod="p", containers=[{"name": "a"}])]},
            ["config.yaml: volumes[1].containers[0].name: default/p/a is also served by"
             " volumes[0]"],
            id="same-stream-url",
        ),
        pytest.param(
            {"volumes": [{"path": "/x"}]},
            ["config.yaml: volumes[0]: name is required"],
            id="volume-without-name",
        ),
        pytest.param(
            {"volumes": [{"name": "v"}, None]},
            ["config.yaml: volumes[0]: path is required",
             "config.yaml: volumes[1]: expected a volume mapping with name and path"],
            id="volume-without-path-and-null-volume",
        ),
        pytest.param(
            {"volumes": [_volume(name="a/b")]},
            ["config.yaml: volumes[0].name: expected a name of letters, digits, '.', '_' or '-'"
             ' (it is part of a URL), got "a/b"'],
            id="volume-name-with-slash",
        ),
        pytest.param(
            {"volumes": [_volume(containers=[{"file": "x.log"}])]},
            ["config.yaml: volumes[0].containers[0]: name is required"],
            id="container-without-name",
        ),
        pytest.param(
            {"volumes": [_volume(containers=[{"name": "a", "file": "../a.log"}])]},
            ["config.yaml: volumes[0].containers[0].file: expected a file name without '/';"
             " put directories in policy.logs.subDir"],
            id="container-file-with-slash",
        ),
        pytest.param(
            {"volumes": [_volume(containers=[{"name": "a", "policy": {"log": {}}}])]},
            ["config.yaml: volumes[0].containers[0].policy.log: unknown key; did you mean logs?"],
            id="policy-log-typo",
        ),
        pytest.param(
            {"volumes": {"name": "web"}},
            ["config.yaml: volumes: expected a list, got a mapping"],
            id="volumes-not-a-list",
        ),
        pytest.param(
            {"kubernetes": {"annotationKey": "not a key"}},
            ['config.yaml: kubernetes.annotationKey: expected an annotation key such as'
             ' logvold.io/logs, got "not a key"'],
            id="bad-annotation-key",
        ),
        pytest.param(
            {"kubernetes": {"kubeletRoot": "var/lib/kubelet", "enabled": "yes"}},
            ['config.yaml: kubernetes.enabled: expected true or false, got "yes"',
             'config.yaml: kubernetes.kubeletRoot: must be an absolute path, got'
             ' "var/lib/kubelet"'],
            id="kubernetes-types",
        ),
        pytest.param(
            {"nodeLogQuery": {"timeout": 0, "maxBytes": "0", "journal": True, "logDir": ""}},
            ["config.yaml: nodeLogQuery.timeout: must be greater than 0",
             "config.yaml: nodeLogQuery.maxBytes: must be greater than 0",
             "config.yaml: nodeLogQuery.journal: expected auto, always or never, got true (YAML"
             " reads unquoted yes/no/on/off as booleans; quote the value)",
             "config.yaml: nodeLogQuery.logDir: must not be empty"],
            id="node-log-query",
        ),
        pytest.param(
            {"rescanInterval": "0s", "logLevel": "verbose", "logFormat": "text",
             "nodeMaxTotalSize": "lots"},
            ["config.yaml: rescanInterval: must be greater than 0",
             'config.yaml: logLevel: expected debug, info, warning or error, got "verbose"',
             'config.yaml: logFormat: expected logfmt or json, got "text"',
             "config.yaml: nodeMaxTotalSize: expected a size such as 10Mi, 512Ki, 1G or 1048576,"
             " got 'lots'"],
            id="top-level-scalars",
        ),
        pytest.param(
            {"volume": []},
            ["config.yaml: volume: unknown key; did you mean volumes?"],
            id="top-level-typo",
        ),
        pytest.param(
            ["server"],
            ["config.yaml: expected a mapping, got a list"],
            id="document-not-a-mapping",
        ),
    ],
)  # fmt: skip
def test_config_problem_messages(tree: object, expected: list[str]) -> None:
    assert sorted(_config_messages(tree)) == sorted(expected)


def test_container_policies_inherit_defaults_even_when_defaults_come_later() -> None:
    tree = {
        "volumes": [_volume(containers=[{"name": "a", "policy": {"logs": {"maxFiles": 1}}}])],
        "defaults": {"compress": "gzip", "maxFiles": 9},
    }
    (container,) = config_from_tree(tree, file="c", lines={}).volumes[0].containers
    assert (container.policy.compress, container.policy.max_files) == ("gzip", 1)


def test_every_problem_of_a_document_is_reported_in_line_order() -> None:
    tree = {
        "logLevel": "loud",
        "defaults": {"rotate": "weekly"},
        "volumes": [_volume(containers=[{"name": "a", "policy": {"logs": {"maxSize": "x"}}}])],
    }
    lines: dict[KeyPath, int] = {
        ("logLevel",): 30,
        ("defaults", "rotate"): 3,
        ("volumes", 0): 10,
        ("volumes", 0, "containers", 0, "policy", "logs", "maxSize"): 15,
    }
    messages = _config_messages(tree, lines)
    assert [m.split(":")[1] for m in messages] == ["3", "15", "30"]


# --- helpers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param((), "", id="root"),
        pytest.param(("volumes", 0, "containers", 1, "policy", "logs", "rotate"),
                     "volumes[0].containers[1].policy.logs.rotate", id="nested"),
        pytest.param(("annotations", "logvold.io/logs"), 'annotations["logvold.io/logs"]',
                     id="odd-key"),
        pytest.param(("my-app",), "my-app", id="dash-key"),
    ],
)  # fmt: skip
def test_format_key(path: KeyPath, expected: str) -> None:
    assert format_key(path) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "null"), (True, "true"), ("a", '"a"'), (3, "3"), (1.5, "1.5"), ({}, "a mapping"),
     ([], "a list"), (b"x", "a bytes")],
)  # fmt: skip
def test_describe_value(value: object, expected: str) -> None:
    assert describe_value(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("\\n\\n", "\n\n", id="newlines"),
        pytest.param("\\x1e", "\x1e", id="hex"),
        pytest.param("\\u2028", "\u2028", id="unicode"),
        pytest.param("\\U0001F600", "\U0001f600", id="wide-unicode"),
        pytest.param("\\\\", "\\", id="backslash"),
        pytest.param("\\t|\\0", "\t|\0", id="tab-nul"),
        pytest.param("plain", "plain", id="no-escapes"),
        pytest.param("\n", "\n", id="already-decoded"),
    ],
)
def test_decode_escapes(text: str, expected: str) -> None:
    assert decode_escapes(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("ab\\", "lone backslash", id="trailing-backslash"),
        pytest.param("\\x1", "needs 2 hex digits", id="short-hex"),
        pytest.param("\\xzz", "needs 2 hex digits", id="bad-hex"),
        pytest.param("\\UFFFFFFFF", "not a valid character", id="out-of-range"),
        pytest.param("\\k", "unknown escape", id="unknown"),
    ],
)
def test_decode_escapes_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_escapes(text)


# --- robustness -------------------------------------------------------------------------------

_KNOWN_KEYS = [
    *POLICY_KEYS, "server", "listen", "tls", "certFile", "keyFile", "auth", "mode", "cacheTTL",
    "defaults", "volumes", "name", "path", "pod", "namespace", "containers", "file", "policy",
    "logs", "kubernetes", "nodeLogQuery", "signal", "pidFile", "command", "enabled", "journal",
    "timeout", "maxBytes", "logLevel", "annotationKey", "kubeletRoot",
]  # fmt: skip
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8),
    st.sampled_from(["10Mi", "7d", "Daily", "raw", "HUP", "a", "/x", "127.0.0.1:1", "\\x1e"]),
)  # fmt: skip
_trees = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(_KNOWN_KEYS), st.integers()), children,
                        max_size=5),
    ),
    max_leaves=25,
)  # fmt: skip


_documents = st.dictionaries(st.sampled_from(_KNOWN_KEYS), _trees, max_size=6)
_volumes = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["a", "b", 1, None]), "path": st.sampled_from(["/a", "/b", 2])},
        optional={"containers": st.lists(st.dictionaries(st.sampled_from(_KNOWN_KEYS), _trees))},
    ),
    max_size=3,
)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        _trees,
        _documents,
        st.builds(lambda d, v: {**d, "volumes": v}, _documents, _volumes),
        st.builds(lambda p: {"defaults": p}, st.dictionaries(st.sampled_from(POLICY_KEYS), _trees)),
    )
)
def test_any_tree_gives_a_config_or_a_config_error(tree: object) -> None:
    try:
        config = config_from_tree(tree, file="fuzz.yaml", lines={})
    except ConfigError as exc:
        assert exc.problems
        assert all(p.file == "fuzz.yaml" and p.message for p in exc.problems)
    else:
        assert isinstance(config, Config)
