"""Read the YAML config file into a Config, keeping the line of every key for
messages; dump a Config back as YAML; `logvold check-config`. The only module
that imports yaml: `core.policy_reader` converts the plain tree this builds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from logvold.core.config_tree import KeyPath, describe_value, format_key
from logvold.core.policy import Config, LogPolicy, ReopenAction, VolumeSpec
from logvold.core.policy_reader import config_from_tree
from logvold.core.units import format_duration, format_size, parse_duration
from logvold.core.values import needs_byte_escapes
from logvold.errors import ConfigError, ConfigProblem
from logvold.fileio.safedir import SafeDir, UnsafeFile

CHECK_CONFIG_USAGE = """\
usage: logvold check-config FILE

Validate a logvold config file: print OK and a summary, or every problem found
(file:line: key: message). FILE may be - for standard input.
A valid file is also checked against this host, as `logvold serve` would: volume
paths that do not exist, or that the installed systemd unit (logvold.service and
its drop-ins; $LOGVOLD_SYSTEMD_UNIT names another unit file, "" none) cannot
write, are printed as warnings: serve refuses to start until they are fixed.
Exit status: 0 valid (warnings or not), 1 invalid or unreadable, 2 usage error.
"""
_COLLECTION_TAGS = ("tag:yaml.org,2002:seq", "tag:yaml.org,2002:map")
_MAX_DEPTH = 64  # deeper than any real config; stops runaway recursion
# Aliases are expanded into the tree, so a few lines of `&a [*b, *b, ...]` can
# stand for billions of nodes; pod annotations are untrusted input.
_MAX_NODES = 200_000


def parse_yaml_tree(text: str, filename: str) -> tuple[object, dict[KeyPath, int]]:
    """The plain tree of a YAML document and the 1-based line of every key path.

    Mapping keys map to the line of the key, list items to the line where the
    item starts. Syntax errors, duplicate keys and non-string keys raise
    ConfigError (all of them that can be found).
    """
    tree, lines, problems = _parse(text, filename)
    if problems:
        raise ConfigError(problems)
    return tree, lines


def load_config_text(text: str, filename: str) -> Config:
    """The Config in YAML `text`; `filename` is used in messages and as `Config.source`.

    Raises ConfigError listing every problem: YAML-level ones (duplicate keys)
    and those of the values alike.
    """
    tree, lines, problems = _parse(text, filename)
    try:
        config = config_from_tree(tree, file=filename, lines=lines)
        problems.extend(same_directory_problems(config, lines, filename))
    except ConfigError as exc:
        # A value the YAML layer rejected reached the converter as null: say it once.
        reported = {problem.key for problem in problems}
        problems.extend(p for p in exc.problems if p.key not in reported)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.line is None, p.line or 0)))
    return config


def _managed_directories(volume: VolumeSpec, defaults: LogPolicy) -> list[str]:
    """The volume's path and every directory its streams live in (path/subDir)."""
    subdirs = {c.policy.sub_dir for c in volume.containers} or {defaults.sub_dir}
    return [volume.path] + [str(Path(volume.path, d)) for d in sorted(subdirs) if d]


def same_directory_problems(
    config: Config, lines: dict[KeyPath, int], filename: str
) -> list[ConfigProblem]:
    """Volumes that reach one directory twice, compared by (st_dev, st_ino) of the
    directory their path resolves to: a second path through a symlink, a bind mount or
    `..` names the same files, and two managers of one directory lose and duplicate
    events. Paths that do not exist (yet) are not compared."""
    problems: list[ConfigProblem] = []
    first: dict[tuple[int, int], tuple[int, str]] = {}
    for index, volume in enumerate(config.volumes):
        mine: dict[tuple[int, int], str] = {}
        for directory in _managed_directories(volume, config.defaults):
            try:
                # The operator's path, resolved (symlinks in it followed on purpose).
                with SafeDir.open_root(Path(directory)) as opened:
                    st = os.fstat(opened.fd)
            except (OSError, UnsafeFile):
                continue
            mine.setdefault((st.st_dev, st.st_ino), directory)
        reported = False
        for ident, directory in mine.items():
            if ident in first and not reported:
                other, other_dir = first[ident]
                key: KeyPath = ("volumes", index, "path")
                line = lines.get(key, lines.get(("volumes", index)))
                problems.append(
                    ConfigProblem(
                        filename,
                        line,
                        format_key(key),
                        f"{directory} is the same directory as {other_dir} of volumes[{other}] "
                        f"(device {ident[0]}, inode {ident[1]}); two volumes would rotate the "
                        "same files",
                    )
                )
                reported = True
        for ident, directory in mine.items():
            first.setdefault(ident, (index, directory))
    return problems


def _parse(text: str, filename: str) -> tuple[object, dict[KeyPath, int], list[ConfigProblem]]:
    loader = yaml.SafeLoader(text.removeprefix("\ufeff"))
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            raise ConfigError([_syntax_problem(exc, filename)]) from exc
        except yaml.YAMLError as exc:
            raise ConfigError([ConfigProblem(filename, None, "", f"invalid YAML: {exc}")]) from exc
        if root is None:
            return None, {}, []
        builder = _TreeBuilder(loader, filename)
        builder.lines[()] = root.start_mark.line + 1
        tree = builder.build(root, (), 0)
        return tree, builder.lines, builder.problems
    finally:
        loader.dispose()


def load_config(path: str | Path) -> Config:
    """The Config in the file at `path`; ConfigError if it cannot be read or is invalid."""
    filename = str(path)
    return load_config_text(read_config_text(filename), filename)


def read_config_text(filename: str) -> str:
    """The text of a config file; ConfigError saying why it cannot be read."""
    try:
        data = Path(filename).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigProblem(filename, None, "", f"cannot read: {reason}")]) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        raise ConfigError([ConfigProblem(filename, line, "", message)]) from exc


def _syntax_problem(exc: yaml.MarkedYAMLError, filename: str) -> ConfigProblem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    what = exc.problem or exc.context or "syntax error"
    if exc.context and exc.problem:
        what = f"{exc.problem} ({exc.context})"
    return ConfigProblem(filename, line, "", f"invalid YAML: {what}")


class _TreeBuilder:
    """Turns composed YAML nodes into dicts, lists and scalars, recording lines."""

    def __init__(self, loader: yaml.SafeLoader, filename: str) -> None:
        self.loader = loader
        self.filename = filename
        self.lines: dict[KeyPath, int] = {}
        self.problems: list[ConfigProblem] = []
        self._open: set[int] = set()  # ids of nodes being built: an alias to one is a cycle
        self._nodes_left = _MAX_NODES

    def problem(self, node: Node, path: KeyPath, message: str) -> None:
        self.problems.append(
            ConfigProblem(self.filename, node.start_mark.line + 1, format_key(path), message)
        )

    def build(self, node: Node, path: KeyPath, depth: int) -> object:
        if depth > _MAX_DEPTH or id(node) in self._open:
            self.problem(node, path, "nested too deeply (a recursive alias?)")
            return None
        self._nodes_left -= 1
        if self._nodes_left == 0:
            self.problem(node, path, f"more than {_MAX_NODES} values once aliases are expanded")
        if self._nodes_left <= 0:
            return None
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if node.tag not in _COLLECTION_TAGS:
            self.problem(node, path, f"unsupported YAML tag {node.tag}")
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                items: list[object] = []
                for index, child in enumerate(node.value):
                    self.lines[(*path, index)] = child.start_mark.line + 1
                    items.append(self.build(child, (*path, index), depth + 1))
                return items
            if isinstance(node, MappingNode):
                return self.mapping(node, path, depth)
        finally:
            self._open.discard(id(node))
        self.problem(node, path, f"unsupported YAML node {node.tag}")  # pragma: no cover
        return None  # pragma: no cover

    def scalar(self, node: ScalarNode, path: KeyPath) -> object:
        raw = _undecoded_delimiter(node, path)
        if raw is not None:
            return raw
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            reason = getattr(exc, "problem", None) or str(exc)
            self.problem(node, path, f"cannot read value: {reason}")
            return None

    def mapping(self, node: MappingNode, path: KeyPath, depth: int) -> dict[str, object]:
        own_keys: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, ScalarNode):
                continue
            key = self.scalar(key_node, path)
            if isinstance(key, str) and key in own_keys:
                self.problem(key_node, (*path, key), "duplicate key; each key may appear once")
            own_keys.add(key)
        try:
            self.loader.flatten_mapping(node)  # resolves `<<: *anchor` merges, own keys last
        except yaml.YAMLError as exc:
            self.problem(node, path, f"invalid merge: {getattr(exc, 'problem', None) or exc}")
            return {}
        entries: dict[str, object] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, path) if isinstance(key_node, ScalarNode) else key_node
            if not isinstance(key, str):
                shown = describe_value(key) if isinstance(key_node, ScalarNode) else "a collection"
                self.problem(key_node, path, f"keys must be strings, got {shown}")
                continue
            self.lines[(*path, key)] = key_node.start_mark.line + 1
            entries[key] = self.build(value_node, (*path, key), depth + 1)
        return entries


# --- dump -----------------------------------------------------------------------------------


def dump_config(config: Config) -> str:
    """The effective config as YAML that loads back to an equal Config.

    `defaults` is written in full; containers list only the keys in which their
    policy differs from `defaults`.
    """
    server: dict[str, Any] = {"listen": config.server.listen}
    if config.server.tls_cert_file or config.server.tls_key_file:
        server["tls"] = {
            "certFile": config.server.tls_cert_file,
            "keyFile": config.server.tls_key_file,
        }
    server["auth"] = {
        "mode": config.server.auth,
        "cacheTTL": _duration_value(config.server.auth_cache_ttl_s),
    }
    server["socket"] = {
        "path": config.server.socket_path,
        "mode": f"{config.server.socket_mode:04o}",
        "group": config.server.socket_group,
    }
    lim = config.server.limits
    server["limits"] = {
        "headerTimeout": _duration_value(lim.header_timeout_s),
        "maxConnections": lim.max_connections,
        "maxFollowers": lim.max_followers,
        "maxFollowersPerStream": lim.max_followers_per_stream,
        "maxHeavyReads": lim.max_heavy_reads,
    }
    k8s = config.kubernetes
    nlq = config.node_log_query
    tree: dict[str, Any] = {
        "server": server,
        "defaults": _policy_tree(config.defaults, None),
        "volumes": [_volume_tree(volume, config.defaults) for volume in config.volumes],
        "kubernetes": {
            "enabled": k8s.enabled,
            "nodeName": k8s.node_name,
            "annotationKey": k8s.annotation_key,
            "kubeletRoot": k8s.kubelet_root,
            "kubeconfig": k8s.kubeconfig,
        },
        "nodeLogQuery": {
            "enabled": nlq.enabled,
            "journal": nlq.journal,
            "journalDirectory": nlq.journal_directory,
            "logDir": nlq.log_dir,
            "timeout": _duration_value(nlq.timeout_s),
            "maxBytes": _size_value(nlq.max_bytes),
        },
        "nodeMaxTotalSize": _size_value(config.node_max_total_size_bytes),
        "rescanInterval": _duration_value(config.rescan_interval_s),
        "maxStreamsPerVolume": config.max_streams_per_volume,
        "logFormat": config.log_format,
        "logLevel": config.log_level,
    }
    body = yaml.dump(
        tree, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False
    )
    return f"# logvold effective config (from {config.source})\n{body}"


class _Dumper(yaml.SafeDumper):
    """SafeDumper that double-quotes strings holding Unicode line breaks.

    Plain and single-quoted scalars fold NEL/LS/PS into spaces on load, so a
    dumped annotation would not read back as written.
    """


def _undecoded_delimiter(node: ScalarNode, path: KeyPath) -> str | None:
    """A double-quoted `delimiter` whose source has a `\\xHH` escape above 0x7f, as
    written: YAML would decode `"\\xe9"` to the character U+00E9 (UTF-8 c3 a9), while
    `logvold run` and the driver read it as the byte e9; core.values decodes it once, the
    same way for every front end."""
    mark, end = node.start_mark, node.end_mark
    if not path or path[-1] != "delimiter" or node.style != '"' or mark.buffer is None:
        return None
    source = str(mark.buffer[mark.pointer + 1 : end.pointer - 1])
    if "\n" in source or not needs_byte_escapes(source):
        return None
    return source


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = '"' if any(c in data for c in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def _volume_tree(volume: VolumeSpec, defaults: LogPolicy) -> dict[str, Any]:
    out: dict[str, Any] = {"name": volume.name, "path": volume.path}
    if volume.pod:
        out["pod"] = volume.pod
    out["namespace"] = volume.namespace
    if volume.max_total_size_bytes:
        out["maxTotalSize"] = _size_value(volume.max_total_size_bytes)
    if volume.max_streams:
        out["maxStreams"] = volume.max_streams
    if volume.labels:
        out["labels"] = dict(volume.labels)
    if volume.containers:
        containers = []
        for container in volume.containers:
            item: dict[str, Any] = {"name": container.name}
            if container.file and container.file != f"{container.name}.log":
                item["file"] = container.file
            overrides = _policy_tree(container.policy, defaults)
            if overrides:
                item["policy"] = {"logs": overrides}
            containers.append(item)
        out["containers"] = containers
    return out


def _policy_tree(policy: LogPolicy, base: LogPolicy | None) -> dict[str, Any]:
    """The YAML keys of `policy`; with `base`, only those that differ from it."""
    raw = _policy_fields(policy)
    base_raw = _policy_fields(base) if base is not None else None
    return {
        key: _yaml_value(key, value)
        for key, value in raw.items()
        if base_raw is None or value != base_raw[key]
    }


def _policy_fields(policy: LogPolicy) -> dict[str, object]:
    return {
        "subDir": policy.sub_dir,
        "rotate": policy.rotate,
        "maxSize": policy.max_size_bytes,
        "maxFiles": policy.max_files,
        "maxAge": policy.max_age_s,
        "maxTotalSize": policy.max_total_size_bytes,
        "compress": policy.compress,
        "delayCompress": policy.delay_compress,
        "format": policy.format,
        "delimiter": policy.delimiter,
        "maxEventSize": policy.max_event_size_bytes,
        "strategy": policy.strategy,
        "collapse": policy.collapse,
        "reopen": policy.reopen,
        "timezone": policy.timezone,
        "annotations": dict(policy.annotations),
    }


def _yaml_value(key: str, value: object) -> Any:
    if key in ("maxSize", "maxTotalSize", "maxEventSize") and isinstance(value, int):
        return _size_value(value)
    if key == "maxAge" and isinstance(value, float):
        return _duration_value(value)
    if isinstance(value, bytes):
        return _delimiter_value(value)
    if isinstance(value, ReopenAction):
        return _reopen_value(value)
    return value


def _size_value(num_bytes: int) -> int | str:
    text = format_size(num_bytes)
    return int(text) if text.isdigit() else text


def _duration_value(seconds: float) -> float | str:
    text = format_duration(seconds)
    try:
        return text if parse_duration(text) == seconds else seconds
    except ValueError:
        return seconds


def _delimiter_value(delimiter: bytes) -> str:
    """The delimiter spelled with backslash escapes (`\\n`, `\\x1e`), as the loader decodes
    (core.values.decode_delimiter: `\\xHH` a byte, `\\uHHHH` a character in UTF-8)."""
    text = delimiter.decode("utf-8", errors="backslashreplace")
    if "\\" in text and text != delimiter.decode("utf-8", errors="ignore"):
        return text  # undecodable bytes: already escaped, best effort
    out: list[str] = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x80:  # \xHH is a byte (core.values): only ASCII is the same char
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}")
    return "".join(out)


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}


def _reopen_value(reopen: ReopenAction | None) -> dict[str, Any] | None:
    if reopen is None:
        return None
    if reopen.command:
        return {"command": list(reopen.command)}
    return {"signal": reopen.signal, "pidFile": reopen.pid_file}


# --- logvold check-config -------------------------------------------------------------------


def main_check_config(argv: Sequence[str]) -> int:
    """`logvold check-config FILE`: 0 valid, 1 invalid or unreadable, 2 usage error."""
    args = list(argv)
    if args in (["-h"], ["--help"]):
        sys.stdout.write(CHECK_CONFIG_USAGE)
        return 0
    if len(args) != 1 or (args[0].startswith("-") and args[0] != "-"):
        sys.stderr.write(CHECK_CONFIG_USAGE)
        return 2
    filename = args[0]
    try:
        if filename == "-":
            filename = "<stdin>"
            text = sys.stdin.read()
        else:
            text = read_config_text(filename)
        config = load_config_text(text, filename)
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        count = len(exc.problems)
        sys.stderr.write(
            f"check-config: {count} problem{'s' if count != 1 else ''} in {filename}\n"
        )
        return 1
    sys.stdout.write(f"OK: {filename}\n{config_summary(config)}\n")
    if filename != "<stdin>":
        _warn_about_host(config, text, filename)
    return 0


def _warn_about_host(config: Config, text: str, filename: str) -> None:
    """What `logvold serve` would refuse on this host (logvold.config.host_checks), as warnings:
    the file itself is valid, and may be meant for another machine."""
    import os

    from logvold.config.host_checks import find_unit, host_problems, read_unit_sandbox

    unit_file = find_unit(os.environ, running=False)
    unit = read_unit_sandbox(unit_file) if unit_file is not None else None
    _, lines, _ = _parse(text, filename)
    problems = host_problems(config, lines=lines, unit=unit)
    for problem in problems:
        sys.stderr.write(f"warning: {problem}\n")
    if problems:
        count = len(problems)
        sys.stderr.write(
            f"check-config: {count} warning{'s' if count != 1 else ''} for this "
            "host: `logvold serve` here refuses to start until "
            f"{'they are' if count != 1 else 'it is'} fixed\n"
        )


def config_summary(config: Config) -> str:
    """One line: volumes, streams, discovery and node log query, for humans."""
    streams = sum(len(volume.containers) for volume in config.volumes)
    open_volumes = sum(1 for volume in config.volumes if not volume.containers)
    parts = [
        _plural(len(config.volumes), "volume"),
        _plural(streams, "stream"),
    ]
    if open_volumes:
        parts[-1] += f" (+ every *.log in {_plural(open_volumes, 'volume')} without containers)"
    parts.append(f"kubernetes discovery {'on' if config.kubernetes.enabled else 'off'}")
    parts.append(f"node log query {'on' if config.node_log_query.enabled else 'off'}")
    parts.append(f"listen {config.server.listen}")
    return ", ".join(parts)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
