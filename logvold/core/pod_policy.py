"""The streams a pod declares in its `logvold.io/logs` annotation: the plain
YAML tree (volume -> container -> policy.logs) checked against the pod object
(a plain dict in the API's JSON shape) and mapped to host paths. Stdlib only;
reading the YAML text is `logvold.sources.annotation`'s job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logvold.core.config_tree import KeyPath, LineMap, describe_value, format_key
from logvold.core.policy import LogPolicy
from logvold.core.policy_reader import policy_from_mapping
from logvold.core.streams import StreamInfo, StreamKey
from logvold.errors import ConfigError, ConfigProblem

EMPTY_DIR_PLUGIN = "kubernetes.io~empty-dir"
"""Directory name of the emptyDir volume plugin under `pods/<uid>/volumes/`."""

FORBIDDEN_POLICY_KEYS = ("reopen",)
"""Keys a pod may not set: `reopen` runs a command or signals a pid file as logvold
(root on the node), which would let any pod author act outside the pod."""


@dataclass(frozen=True, kw_only=True)
class PodRef:
    """The identity of a pod, as the watch delivers it."""

    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, kw_only=True)
class PodStreamSpec:
    """One container stream declared in a pod annotation."""

    volume: str
    """Name of the pod's emptyDir volume that holds the file."""
    container: str
    """Container name; the active file is `<container>.log` in `<volume>/<subDir>`."""
    policy: LogPolicy
    """`defaults` overridden key by key by the annotation's policy block."""


@dataclass(frozen=True, kw_only=True)
class PodStreams:
    """What one pod object contributes to the registry."""

    pod: PodRef
    streams: tuple[StreamInfo, ...] = ()
    problems: tuple[ConfigProblem, ...] = ()
    """Why the annotation was rejected; when not empty, `streams` is ()."""
    annotation: str | None = None
    """The raw annotation text (None: the pod did not opt in)."""


TreeParser = Callable[[str, str], tuple[object, LineMap]]
"""(YAML text, file name for messages) -> (plain tree, line of every key path);
raises ConfigError on a syntax error. `discovery.annotation` provides the real one."""


def pod_ref(pod: Mapping[str, Any]) -> PodRef:
    """Namespace, name and uid of a pod object (missing parts are "")."""
    meta = pod.get("metadata") or {}
    return PodRef(
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
    )


def pod_annotation(pod: Mapping[str, Any], key: str) -> str | None:
    """The annotation `key` of a pod object, or None."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(key)
    return value if isinstance(value, str) else None


def specs_from_tree(
    tree: object, *, file: str, lines: LineMap, defaults: LogPolicy
) -> tuple[PodStreamSpec, ...]:
    """The streams of an annotation tree; ConfigError with every problem found."""
    problems: list[ConfigProblem] = []

    def problem(path: KeyPath, message: str) -> None:
        problems.append(ConfigProblem(file, _line(lines, path), _key(path), message))

    if not isinstance(tree, Mapping) or not tree:
        problem((), "expected a mapping of volume name -> container name -> policy")
        raise ConfigError(problems)
    specs: list[PodStreamSpec] = []
    for volume, containers in tree.items():
        if not isinstance(volume, str) or not volume:
            problem((), f"volume names must be strings, got {describe_value(volume)}")
            continue
        if not isinstance(containers, Mapping) or not containers:
            problem((volume,), "expected a mapping of container name -> policy")
            continue
        for container, block in containers.items():
            if not isinstance(container, str) or not container:
                got = describe_value(container)
                problem((volume,), f"container names must be strings, got {got}")
                continue
            path: KeyPath = (volume, container)
            if isinstance(block, Mapping):
                for forbidden in FORBIDDEN_POLICY_KEYS:
                    if forbidden in block:
                        problem(
                            (*path, forbidden),
                            "not allowed in a pod annotation (it would run as logvold on the"
                            " node); use strategy punch, or set it in the node's config file",
                        )
            try:
                policy = policy_from_mapping(
                    {} if block is None else block,
                    file=file,
                    lines=lines,
                    key_prefix=path,
                    base=defaults,
                )
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            specs.append(PodStreamSpec(volume=volume, container=container, policy=policy))
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.line is None, p.line or 0)))
    return tuple(specs)


def check_specs_against_pod(
    specs: Sequence[PodStreamSpec], pod: Mapping[str, Any], *, file: str, lines: LineMap
) -> list[ConfigProblem]:
    """Problems of specs that name volumes or containers the pod does not have."""
    spec = pod.get("spec") or {}
    volumes = {str(v.get("name")): v for v in spec.get("volumes") or [] if isinstance(v, Mapping)}
    containers = [
        str(c.get("name"))
        for kind in ("containers", "initContainers", "ephemeralContainers")
        for c in spec.get(kind) or []
        if isinstance(c, Mapping)
    ]
    problems: list[ConfigProblem] = []
    seen: dict[str, str] = {}
    for s in specs:
        volume = volumes.get(s.volume)
        if volume is None:
            known = ", ".join(sorted(volumes)) or "none"
            problems.append(
                ConfigProblem(
                    file,
                    _line(lines, (s.volume,)),
                    _key((s.volume,)),
                    f"the pod has no volume {s.volume!r} (its volumes: {known})",
                )
            )
        elif "emptyDir" not in volume:
            kind = next((k for k in volume if k != "name"), "unknown")
            problems.append(
                ConfigProblem(
                    file,
                    _line(lines, (s.volume,)),
                    _key((s.volume,)),
                    f"volume {s.volume!r} is a {kind} volume; only emptyDir volumes are managed",
                )
            )
        path: KeyPath = (s.volume, s.container)
        if s.container not in containers:
            problems.append(
                ConfigProblem(
                    file,
                    _line(lines, path),
                    _key(path),
                    f"the pod has no container {s.container!r}"
                    f" (its containers: {', '.join(containers) or 'none'})",
                )
            )
        elif s.container in seen:
            problems.append(
                ConfigProblem(
                    file,
                    _line(lines, path),
                    _key(path),
                    f"container {s.container!r} is already declared under volume"
                    f" {seen[s.container]!r}; one stream per container",
                )
            )
        seen.setdefault(s.container, s.volume)
    return problems


def empty_dir_path(kubelet_root: str, pod_uid: str, volume: str) -> Path:
    """Host path of a pod's emptyDir volume, as the kubelet lays it out."""
    return Path(kubelet_root, "pods", pod_uid, "volumes", EMPTY_DIR_PLUGIN, volume)


MAX_POD_LABELS = 256
"""Labels kept per pod (the API server validates them; this bounds memory anyway)."""


def pod_labels(pod: Mapping[str, Any]) -> dict[str, str]:
    """metadata.labels of a pod object: string keys and values only, bounded."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if not isinstance(labels, Mapping):
        return {}
    return {
        k: v
        for k, v in list(labels.items())[:MAX_POD_LABELS]
        if isinstance(k, str) and isinstance(v, str) and len(k) <= 317 and len(v) <= 63
    }


def stream_infos(
    pod: PodRef,
    specs: Sequence[PodStreamSpec],
    *,
    kubelet_root: str,
    labels: Mapping[str, str] | None = None,
) -> tuple[StreamInfo, ...]:
    """The registry entries of a pod's accepted specs."""
    infos = []
    for s in specs:
        volume_dir = empty_dir_path(kubelet_root, pod.uid, s.volume)
        directory = volume_dir / s.policy.sub_dir if s.policy.sub_dir else volume_dir
        infos.append(
            StreamInfo(
                key=StreamKey(pod.namespace, pod.name, s.container),
                directory=directory,
                base=f"{s.container}.log",
                policy=s.policy,
                volume=s.volume,
                source="kubernetes",
                annotations=dict(s.policy.annotations),
                pod_uid=pod.uid,
                root=volume_dir,
                labels=dict(labels or {}),
            )
        )
    return tuple(sorted(infos, key=lambda i: i.key))


def evaluate_pod(
    pod: Mapping[str, Any],
    *,
    annotation_key: str,
    kubelet_root: str,
    defaults: LogPolicy,
    parse_tree: TreeParser,
) -> PodStreams:
    """The streams a pod object declares, or the problems of its annotation."""
    ref = pod_ref(pod)
    text = pod_annotation(pod, annotation_key)
    if text is None:
        return PodStreams(pod=ref)
    file = f"annotation {annotation_key} of pod {ref}"
    if not _is_path_component(ref.uid):
        problem = ConfigProblem(file, None, "", f"pod uid {ref.uid!r} is not usable in a path")
        return PodStreams(pod=ref, annotation=text, problems=(problem,))
    try:
        tree, lines = parse_tree(text, file)
        specs = specs_from_tree(tree, file=file, lines=lines, defaults=defaults)
    except ConfigError as exc:
        return PodStreams(pod=ref, annotation=text, problems=tuple(exc.problems))
    bad_names = [
        ConfigProblem(file, _line(lines, (s.volume,)), _key((s.volume,)), "not a valid volume name")
        for s in specs
        if not _is_path_component(s.volume)
    ]
    problems = bad_names or check_specs_against_pod(specs, pod, file=file, lines=lines)
    if problems:
        return PodStreams(pod=ref, annotation=text, problems=tuple(problems))
    streams = stream_infos(ref, specs, kubelet_root=kubelet_root, labels=pod_labels(pod))
    return PodStreams(pod=ref, annotation=text, streams=streams)


def _is_path_component(text: str) -> bool:
    return bool(text) and "/" not in text and text not in (".", "..") and "\0" not in text


def _line(lines: LineMap, path: KeyPath) -> int | None:
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        path = path[:-1]


def _key(path: KeyPath) -> str:
    return format_key(path)
