"""The policy reader: a whole config document or one `policy.logs` block, from a plain
YAML tree with line marks to the frozen values of `core.policy`.

Stdlib only. Every problem is collected (file, line, key, message) and raised together
as one ConfigError; the value converters are `core.config_tree`'s.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Final

from logvold.core.config_tree import INVALID, KeyPath, LineMap, TreeReader, describe_value
from logvold.core.policy import (
    Config,
    ContainerSpec,
    KubernetesConfig,
    LogPolicy,
    NodeLogQueryConfig,
    ServerConfig,
    ServerLimits,
    VolumeSpec,
)

_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
_ANNOTATION_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_LOG_LEVELS = ("debug", "info", "warning", "error")


class _Reader(TreeReader):
    """The sections of a config document, each converted with TreeReader's value checks."""

    def policy(self, value: object, path: KeyPath, base: LogPolicy) -> LogPolicy:
        entries = self.mapping(value, path, _POLICY_FIELDS)
        if entries is None:
            return base
        changes: dict[str, Any] = {}
        for key, item in entries.items():
            field_name, convert = _POLICY_FIELDS[key]
            converted = convert(self, item, (*path, key))
            if converted is not INVALID:
                changes[field_name] = converted
        policy = replace(base, **changes)
        if (
            policy.format != "raw"
            and policy.delimiter != b"\n"
            and ("delimiter" in changes or "format" in changes)
        ):
            where = "delimiter" if "delimiter" in entries else "format"
            self.problem(
                (*path, where),
                f"delimiter applies only to format raw; {policy.format} frames events itself",
            )
        if len(policy.delimiter) > policy.max_event_size_bytes and (
            "delimiter" in changes or "max_event_size_bytes" in changes
        ):
            where = "maxEventSize" if "maxEventSize" in entries else "delimiter"
            self.problem((*path, where), "maxEventSize must be at least the delimiter's length")
        return policy

    def server(self, value: object, path: KeyPath) -> ServerConfig:
        entries = self.mapping(value, path, ("listen", "tls", "auth", "socket", "limits"))
        changes: dict[str, Any] = {}
        if not entries:
            return ServerConfig()
        if "listen" in entries:
            listen = self.listen(entries["listen"], (*path, "listen"))
            if listen is not INVALID:
                changes["listen"] = listen
        if "tls" in entries:
            tls_path = (*path, "tls")
            tls = self.mapping(entries["tls"], tls_path, ("certFile", "keyFile")) or {}
            files = {"certFile": "", "keyFile": ""}
            for key in files:
                if key in tls and isinstance(text := self.string(tls[key], (*tls_path, key)), str):
                    files[key] = text.strip()
            changes["tls_cert_file"], changes["tls_key_file"] = files["certFile"], files["keyFile"]
            if bool(files["certFile"]) != bool(files["keyFile"]):
                missing = "keyFile" if files["certFile"] else "certFile"
                self.problem(tls_path, f"set both certFile and keyFile; {missing} is missing")
        if "auth" in entries:
            auth_path = (*path, "auth")
            auth = self.mapping(entries["auth"], auth_path, ("mode", "cacheTTL")) or {}
            if "mode" in auth:
                mode = self.choice(
                    auth["mode"], (*auth_path, "mode"), ("local", "none", "kubernetes")
                )
                if mode is not INVALID:
                    changes["auth"] = mode
            if "cacheTTL" in auth:
                ttl = self.duration(auth["cacheTTL"], (*auth_path, "cacheTTL"))
                if ttl is not INVALID:
                    changes["auth_cache_ttl_s"] = ttl
        if "socket" in entries:
            changes.update(self.server_socket(entries["socket"], (*path, "socket")))
        if "limits" in entries:
            changes["limits"] = self.server_limits(entries["limits"], (*path, "limits"))
        return ServerConfig(**changes)

    def server_socket(self, value: object, path: KeyPath) -> dict[str, Any]:
        entries = self.mapping(value, path, ("path", "mode", "group")) or {}
        changes: dict[str, Any] = {}
        if "path" in entries:
            text = self.string(entries["path"], (*path, "path"))
            if isinstance(text, str):
                if text and not posixpath.isabs(text):
                    self.problem(
                        (*path, "path"), f"must be an absolute path, got {describe_value(text)}"
                    )
                else:
                    changes["socket_path"] = text
        if "mode" in entries:
            mode = entries["mode"]
            text = mode if isinstance(mode, str) else None
            if text is None or not re.fullmatch(r"0?[0-7]{3}", text):
                self.problem(
                    (*path, "mode"),
                    "expected octal permission bits as a quoted string"
                    f' such as "0660", got {describe_value(mode)}',
                )
            elif int(text, 8) & ~0o660:
                self.problem(
                    (*path, "mode"),
                    f"only read/write bits for owner and group (at most 0660), got {text}",
                )
            else:
                changes["socket_mode"] = int(text, 8)
        if "group" in entries:
            group = self.string(entries["group"], (*path, "group"))
            if isinstance(group, str):
                changes["socket_group"] = group
        return changes

    def server_limits(self, value: object, path: KeyPath) -> ServerLimits:
        keys = {
            "headerTimeout": "header_timeout_s",
            "maxConnections": "max_connections",
            "maxFollowers": "max_followers",
            "maxFollowersPerStream": "max_followers_per_stream",
            "maxHeavyReads": "max_heavy_reads",
        }
        entries = self.mapping(value, path, tuple(keys)) or {}
        changes: dict[str, Any] = {}
        for key, item in entries.items():
            where = (*path, key)
            if key == "headerTimeout":
                converted = self.duration(item, where, positive=True)
            else:
                converted = self.count(item, where)
                if converted == 0:
                    self.problem(where, "must be at least 1")
                    converted = INVALID
            if converted is not INVALID:
                changes[keys[key]] = converted
        return ServerLimits(**changes)

    def listen(self, value: object, path: KeyPath) -> object:
        text = self.string(value, path, required=True)
        if not isinstance(text, str):
            return INVALID
        host, sep, port = text.rpartition(":")
        ok = bool(sep) and port.isdigit() and int(port) <= 65535
        if ok and host.startswith("["):
            try:
                ok = host.endswith("]") and ipaddress.IPv6Address(host[1:-1]) is not None
            except ValueError:
                ok = False
        elif ok:
            ok = bool(_HOSTNAME.fullmatch(host))
        if not ok:
            self.problem(
                path,
                f"expected host:port such as 127.0.0.1:8642, 0.0.0.0:8642 or [::1]:8642,"
                f" got {describe_value(text)}",
            )
            return INVALID
        return text

    def unique_name(
        self, item: object, path: KeyPath, first_by_name: dict[str, int], what: str
    ) -> None:
        """Report a list item whose `name` an earlier item already has."""
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str):
            return
        if name in first_by_name:
            self.problem(
                (*path, "name"),
                f"duplicate {what} name {describe_value(name)};"
                f" first used by {what}s[{first_by_name[name]}]",
            )
        else:
            first_by_name[name] = int(path[-1])

    def volumes(self, value: object, path: KeyPath, defaults: LogPolicy) -> tuple[VolumeSpec, ...]:
        items = self.items(value, path)
        if items is None:
            return ()
        volumes: list[VolumeSpec] = []
        first_by_name: dict[str, int] = {}
        first_by_path: dict[str, int] = {}
        served: dict[tuple[str, str, str], int] = {}
        for index, item in enumerate(items):
            self.unique_name(item, (*path, index), first_by_name, "volume")
            volume = self.volume(item, (*path, index), defaults)
            if volume is None:
                continue
            normal_path = posixpath.normpath(volume.path)
            if normal_path in first_by_path:
                self.problem(
                    (*path, index, "path"),
                    f"same path as volumes[{first_by_path[normal_path]}];"
                    " two volumes would rotate the same files",
                )
            first_by_path.setdefault(normal_path, index)
            for c_index, container in enumerate(volume.containers):
                url = (volume.namespace, volume.pod or volume.name, container.name)
                if url in served:
                    self.problem(
                        (*path, index, "containers", c_index, "name"),
                        f"{'/'.join(url)} is also served by volumes[{served[url]}]",
                    )
                served.setdefault(url, index)
            volumes.append(volume)
        return tuple(volumes)

    def volume(self, value: object, path: KeyPath, defaults: LogPolicy) -> VolumeSpec | None:
        entries = self.mapping(
            value,
            path,
            (
                "name",
                "path",
                "pod",
                "namespace",
                "maxTotalSize",
                "maxStreams",
                "containers",
                "labels",
            ),
        )
        if entries is None:
            return None
        if value is None:
            self.problem(path, "expected a volume mapping with name and path")
            return None
        before = len(self.problems)
        fields: dict[str, Any] = {}
        for key in ("name", "path"):
            if key not in entries:
                self.problem(path, f"{key} is required")
        if "name" in entries:
            fields["name"] = self.name(entries["name"], (*path, "name"))
        if "path" in entries:
            fields["path"] = self.string(entries["path"], (*path, "path"), required=True)
        if "pod" in entries:
            fields["pod"] = self.name(entries["pod"], (*path, "pod"))
        if "namespace" in entries:
            fields["namespace"] = self.name(entries["namespace"], (*path, "namespace"))
        if "maxTotalSize" in entries:
            fields["max_total_size_bytes"] = self.size(
                entries["maxTotalSize"], (*path, "maxTotalSize")
            )
        if "maxStreams" in entries:
            fields["max_streams"] = self.stream_cap(
                entries["maxStreams"], (*path, "maxStreams"), lowest=0
            )
        if "containers" in entries:
            fields["containers"] = self.containers(
                entries["containers"], (*path, "containers"), defaults
            )
        if "labels" in entries:
            labels = self.string_map(entries["labels"], (*path, "labels"))
            if isinstance(labels, dict):
                fields["labels"] = labels
        if len(self.problems) > before:
            return None
        return VolumeSpec(**fields)

    def containers(
        self, value: object, path: KeyPath, defaults: LogPolicy
    ) -> tuple[ContainerSpec, ...]:
        items = self.items(value, path) or []
        containers: list[ContainerSpec] = []
        first_by_name: dict[str, int] = {}
        first_by_file: dict[str, int] = {}
        for index, item in enumerate(items):
            self.unique_name(item, (*path, index), first_by_name, "container")
            container = self.container(item, (*path, index), defaults)
            if container is None:
                continue
            active = posixpath.join(container.policy.sub_dir, container.file)
            if active in first_by_file:
                self.problem(
                    (*path, index),
                    f"active file {describe_value(active)} is also used by"
                    f" containers[{first_by_file[active]}]",
                )
            first_by_file.setdefault(active, index)
            containers.append(container)
        return tuple(containers)

    def container(self, value: object, path: KeyPath, defaults: LogPolicy) -> ContainerSpec | None:
        entries = self.mapping(value, path, ("name", "file", "policy"))
        if entries is None:
            return None
        before = len(self.problems)
        name = self.name(entries["name"], (*path, "name")) if "name" in entries else INVALID
        if "name" not in entries:
            self.problem(path, "name is required")
        file = ""
        if "file" in entries:
            text = self.string(entries["file"], (*path, "file"), required=True)
            if isinstance(text, str):
                if "/" in text or text in (".", ".."):
                    self.problem(
                        (*path, "file"),
                        "expected a file name without '/'; put directories in policy.logs.subDir",
                    )
                file = text
        policy = defaults
        if "policy" in entries:
            policy_path = (*path, "policy")
            block = self.mapping(entries["policy"], policy_path, ("logs",)) or {}
            if "logs" in block:
                policy = self.policy(block["logs"], (*policy_path, "logs"), defaults)
        if len(self.problems) > before or not isinstance(name, str):
            return None
        return ContainerSpec(name=name, file=file or f"{name}.log", policy=policy)

    def kubernetes(self, value: object, path: KeyPath) -> KubernetesConfig:
        entries = (
            self.mapping(
                value, path, ("enabled", "nodeName", "annotationKey", "kubeletRoot", "kubeconfig")
            )
            or {}
        )
        changes: dict[str, Any] = {}
        if "enabled" in entries:
            changes["enabled"] = self.boolean(entries["enabled"], (*path, "enabled"))
        if "nodeName" in entries:
            changes["node_name"] = self.string(entries["nodeName"], (*path, "nodeName"))
        if "annotationKey" in entries:
            changes["annotation_key"] = self.annotation_key(
                entries["annotationKey"], (*path, "annotationKey")
            )
        if "kubeletRoot" in entries:
            root = self.string(entries["kubeletRoot"], (*path, "kubeletRoot"), required=True)
            if isinstance(root, str) and not posixpath.isabs(root):
                self.problem(
                    (*path, "kubeletRoot"), f"must be an absolute path, got {describe_value(root)}"
                )
                root = INVALID
            changes["kubelet_root"] = root
        if "kubeconfig" in entries:
            changes["kubeconfig"] = self.string(entries["kubeconfig"], (*path, "kubeconfig"))
        return KubernetesConfig(**{k: v for k, v in changes.items() if v is not INVALID})

    def annotation_key(self, value: object, path: KeyPath) -> object:
        text = self.string(value, path, required=True)
        if not isinstance(text, str):
            return INVALID
        prefix, _, name = text.rpartition("/")
        ok = bool(_ANNOTATION_NAME.fullmatch(name)) and len(name) <= 63
        if prefix:
            ok = ok and len(prefix) <= 253 and bool(_HOSTNAME.fullmatch(prefix))
        if not ok:
            self.problem(
                path,
                f"expected an annotation key such as logvold.io/logs, got {describe_value(text)}",
            )
            return INVALID
        return text

    def node_log_query(self, value: object, path: KeyPath) -> NodeLogQueryConfig:
        entries = (
            self.mapping(
                value,
                path,
                ("enabled", "journal", "journalDirectory", "logDir", "timeout", "maxBytes"),
            )
            or {}
        )
        changes: dict[str, Any] = {}
        if "enabled" in entries:
            changes["enabled"] = self.boolean(entries["enabled"], (*path, "enabled"))
        if "journal" in entries:
            changes["journal"] = self.choice(
                entries["journal"], (*path, "journal"), ("auto", "always", "never")
            )
        if "journalDirectory" in entries:
            changes["journal_directory"] = self.string(
                entries["journalDirectory"], (*path, "journalDirectory")
            )
        if "logDir" in entries:
            changes["log_dir"] = self.string(entries["logDir"], (*path, "logDir"), required=True)
        if "timeout" in entries:
            changes["timeout_s"] = self.duration(
                entries["timeout"], (*path, "timeout"), positive=True
            )
        if "maxBytes" in entries:
            changes["max_bytes"] = self.size(
                entries["maxBytes"], (*path, "maxBytes"), positive=True
            )
        return NodeLogQueryConfig(**{k: v for k, v in changes.items() if v is not INVALID})

    def config(self, value: object) -> Config:
        root: KeyPath = ()
        if value is None:
            return Config(source=self.file)
        if isinstance(value, Mapping):
            # `x-` keys hold YAML anchors for reuse, as in docker compose files.
            value = {
                k: v for k, v in value.items() if not (isinstance(k, str) and k.startswith("x-"))
            }
        entries = self.mapping(value, root, _TOP_LEVEL_KEYS)
        if entries is None:
            return Config(source=self.file)
        defaults = self.policy(entries.get("defaults"), ("defaults",), LogPolicy())
        fields: dict[str, Any] = {
            "source": self.file,
            "defaults": defaults,
            "server": self.server(entries.get("server"), ("server",)),
            "volumes": self.volumes(entries.get("volumes"), ("volumes",), defaults),
            "kubernetes": self.kubernetes(entries.get("kubernetes"), ("kubernetes",)),
            "node_log_query": self.node_log_query(entries.get("nodeLogQuery"), ("nodeLogQuery",)),
        }
        if "nodeMaxTotalSize" in entries:
            fields["node_max_total_size_bytes"] = self.size(
                entries["nodeMaxTotalSize"], ("nodeMaxTotalSize",)
            )
        if "rescanInterval" in entries:
            fields["rescan_interval_s"] = self.duration(
                entries["rescanInterval"], ("rescanInterval",), positive=True
            )
        if "maxStreamsPerVolume" in entries:
            fields["max_streams_per_volume"] = self.stream_cap(
                entries["maxStreamsPerVolume"], ("maxStreamsPerVolume",)
            )
        if "logFormat" in entries:
            fields["log_format"] = self.choice(
                entries["logFormat"], ("logFormat",), ("logfmt", "json")
            )
        if "logLevel" in entries:
            level = entries["logLevel"]
            fields["log_level"] = self.choice(
                level.lower() if isinstance(level, str) else level, ("logLevel",), _LOG_LEVELS
            )
        return Config(**{k: v for k, v in fields.items() if v is not INVALID})


_PolicyConverter = Callable[[_Reader, object, KeyPath], object]
_POLICY_FIELDS: dict[str, tuple[str, _PolicyConverter]] = {
    "subDir": ("sub_dir", _Reader.relative_dir),
    "rotate": ("rotate", _Reader.rotate),
    "maxSize": ("max_size_bytes", _Reader.size),
    "maxFiles": ("max_files", _Reader.count),
    "maxAge": ("max_age_s", _Reader.duration),
    "maxTotalSize": ("max_total_size_bytes", _Reader.size),
    "compress": ("compress", lambda r, v, p: r.choice(v, p, ("none", "gzip", "zstd"))),
    "delayCompress": ("delay_compress", _Reader.boolean),
    "format": ("format", lambda r, v, p: r.choice(v, p, ("raw", "cri", "json-file"))),
    "delimiter": ("delimiter", _Reader.delimiter),
    "maxEventSize": ("max_event_size_bytes", lambda r, v, p: r.size(v, p, positive=True)),
    "strategy": ("strategy", lambda r, v, p: r.choice(v, p, ("punch", "rename", "copytruncate"))),
    "collapse": ("collapse", lambda r, v, p: r.choice(v, p, ("auto", "always", "never"))),
    "reopen": ("reopen", _Reader.reopen),
    "timezone": ("timezone", _Reader.timezone),
    "annotations": ("annotations", _Reader.string_map),
}
"""YAML key of a policy -> (LogPolicy field, converter)."""

POLICY_KEYS: Final = tuple(_POLICY_FIELDS)
"""The YAML keys of a `policy.logs` block, in documentation order."""

_TOP_LEVEL_KEYS = (
    "server",
    "defaults",
    "volumes",
    "kubernetes",
    "nodeLogQuery",
    "nodeMaxTotalSize",
    "rescanInterval",
    "maxStreamsPerVolume",
    "logFormat",
    "logLevel",
)


def policy_from_mapping(
    tree: object,
    *,
    file: str,
    lines: LineMap,
    key_prefix: KeyPath,
    base: LogPolicy,
) -> LogPolicy:
    """`base` overridden key by key by the `policy.logs` mapping `tree`.

    `key_prefix` is where `tree` sits in the document (keys of `lines` are full
    paths); pod annotations pass their own. Raises ConfigError with every problem.
    """
    reader = _Reader(file, lines)
    policy = reader.policy(tree, key_prefix, base)
    reader.raise_if_problems()
    return policy


def config_from_tree(tree: object, *, file: str, lines: LineMap) -> Config:
    """The Config of a whole YAML document; raises ConfigError with every problem."""
    reader = _Reader(file, lines)
    config = reader.config(tree)
    reader.raise_if_problems()
    return config
