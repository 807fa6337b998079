"""core.pod_policy: annotation trees checked against pod objects (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from logvold.core.pod_policy import (
    PodRef,
    empty_dir_path,
    evaluate_pod,
    pod_annotation,
    pod_ref,
    specs_from_tree,
)
from logvold.core.policy import LogPolicy
from logvold.core.streams import StreamKey
from logvold.errors import ConfigError
from logvold.sources.annotation import parse_annotation_tree
from tests.support.fake_kube_api import make_pod

KEY = "logvold.io/logs"


def _evaluate(pod: dict[str, Any], defaults: LogPolicy | None = None) -> Any:
    return evaluate_pod(
        pod,
        annotation_key=KEY,
        kubelet_root="/k",
        defaults=defaults or LogPolicy(),
        parse_tree=parse_annotation_tree,
    )


def test_pod_without_annotation_declares_nothing() -> None:
    result = _evaluate(make_pod("p", node="n"))
    assert result.streams == ()
    assert result.problems == ()
    assert result.annotation is None


def test_streams_of_two_volumes_sorted_with_paths_and_defaults() -> None:
    pod = make_pod(
        "p",
        node="n",
        namespace="ns",
        uid="u-1",
        volumes=("a", "b"),
        containers=("web", "db"),
        annotation="b:\n  web: {subDir: x/y, compress: gzip}\na:\n  db:\n",
    )
    result = _evaluate(pod, LogPolicy(max_files=2, compress="zstd"))
    assert result.problems == ()
    assert [str(s.key) for s in result.streams] == ["ns/p/db", "ns/p/web"]
    db, web = result.streams
    assert db.directory == Path("/k/pods/u-1/volumes/kubernetes.io~empty-dir/a")
    assert web.directory == Path("/k/pods/u-1/volumes/kubernetes.io~empty-dir/b/x/y")
    assert (db.base, web.base) == ("db.log", "web.log")
    assert (db.policy.compress, web.policy.compress) == ("zstd", "gzip")
    assert db.policy.max_files == web.policy.max_files == 2
    assert {s.source for s in result.streams} == {"kubernetes"}
    assert {s.pod_uid for s in result.streams} == {"u-1"}


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ("", "expected a mapping of volume name"),
        ("- logs\n", "expected a mapping of volume name"),
        ("logs: app\n", "logs: expected a mapping of container name"),
        ("logs:\n  app:\n    maxSize: lots\n", ":3: logs.app.maxSize:"),
        ("logs:\n  app:\n    subDir: ../../etc\n", "must be a directory inside the volume"),
        ("logs:\n  app: {reopen: {signal: HUP, pidFile: /run/x.pid}}\n", "not allowed in a pod"),
        ("logs:\n  nginx: {}\n", "no container 'nginx' (its containers: app)"),
        ("tmp:\n  app: {}\n", "the pod has no volume 'tmp' (its volumes: config, logs, logs2)"),
        ("config:\n  app: {}\n", "volume 'config' is a configMap volume"),
        ("logs:\n  app: {}\nlogs2:\n  app: {}\n", "already declared under volume 'logs'"),
        ("logs: {app: {}\n", "invalid YAML"),
        ("logs:\n  app: {}\nlogs:\n  app: {}\n", "duplicate"),
    ],
    ids=[
        "empty",
        "list",
        "volume-not-mapping",
        "bad-size",
        "subdir-escape",
        "reopen",
        "unknown-container",
        "unknown-volume",
        "not-emptydir",
        "container-twice",
        "syntax",
        "duplicate-key",
    ],
)
def test_rejected_annotations_say_where_and_why(annotation: str, expected: str) -> None:
    pod = make_pod("p", node="n", volumes=("logs", "logs2"), annotation=annotation)
    result = _evaluate(pod)
    assert result.streams == ()
    text = "\n".join(str(p) for p in result.problems)
    assert expected in text
    assert all(p.file == "annotation logvold.io/logs of pod default/p" for p in result.problems)


def test_every_problem_is_reported_at_once() -> None:
    tree, lines = parse_annotation_tree("logs:\n  a: {rotate: Weekly}\n  b: {maxFiles: -1}\n", "f")
    with pytest.raises(ConfigError) as caught:
        specs_from_tree(tree, file="f", lines=lines, defaults=LogPolicy())
    assert [(p.line, p.key) for p in caught.value.problems] == [
        (2, "logs.a.rotate"),
        (3, "logs.b.maxFiles"),
    ]


def test_unsafe_uid_is_rejected() -> None:
    pod = make_pod("p", node="n", uid="../../etc", annotation="logs:\n  app: {}\n")
    result = _evaluate(pod)
    assert result.streams == ()
    assert "not usable in a path" in str(result.problems[0])


def test_small_accessors() -> None:
    pod = make_pod("p", node="n", namespace="ns", uid="u", annotation="x")
    assert pod_ref(pod) == PodRef(namespace="ns", name="p", uid="u")
    assert str(pod_ref(pod)) == "ns/p"
    assert pod_annotation(pod, KEY) == "x"
    assert pod_annotation(pod, "other") is None
    assert empty_dir_path("/var/lib/kubelet", "u", "v") == Path(
        "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/v"
    )
    assert StreamKey("ns", "p", "c") < StreamKey("ns", "p", "d")
