"""Pod labels reach the registry (for kubectl's label selectors): from a discovered pod's
metadata.labels, and from a static volume's `labels:` in the config file; the new routes
are authorised like the kubelet's catch-all."""

from __future__ import annotations

from pathlib import Path

import pytest

from logvold.config.yaml_file import load_config_text
from logvold.core.pod_policy import MAX_POD_LABELS, evaluate_pod
from logvold.core.policy import LogPolicy
from logvold.core.streams import StreamRegistry
from logvold.errors import ConfigError
from logvold.server.auth import request_attributes
from logvold.sources.annotation import parse_annotation_tree
from logvold.sources.static import StaticSource
from tests.support.fake_kube_api import make_pod


def test_discovered_pod_labels_are_kept_bounded() -> None:
    pod = make_pod("web", node="n", annotation="logs:\n  app: {}\n")
    pod["metadata"]["labels"] = {
        "app": "web",
        "tier": "front",
        "bad": 3,
        **{f"k{i}": "v" for i in range(MAX_POD_LABELS + 10)},
    }
    streams = evaluate_pod(
        pod,
        annotation_key="logvold.io/logs",
        kubelet_root="/k",
        defaults=LogPolicy(),
        parse_tree=parse_annotation_tree,
    ).streams
    assert len(streams) == 1
    labels = streams[0].labels
    assert labels["app"] == "web" and labels["tier"] == "front" and "bad" not in labels
    assert len(labels) <= MAX_POD_LABELS


def test_static_volume_labels_from_config(tmp_path: Path) -> None:
    (tmp_path / "app.log").write_bytes(b"")
    config = load_config_text(
        f"volumes:\n  - name: v\n    path: {tmp_path}\n    labels: {{app: web, tier: '3'}}\n",
        "cfg.yaml",
    )
    assert dict(config.volumes[0].labels) == {"app": "web", "tier": "3"}
    registry = StreamRegistry()
    source = StaticSource(registry)
    source.set_config(config)
    source.scan()
    (info,) = registry.snapshot()
    assert dict(info.labels) == {"app": "web", "tier": "3"}


def test_static_volume_labels_must_be_strings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config_text(
            f"volumes:\n  - name: v\n    path: {tmp_path}\n    labels: {{n: 3}}\n", "cfg.yaml"
        )
    assert "cfg.yaml:4" in str(e.value) and "labels" in str(e.value)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/status.js",
        "/containerLogs/ns/pod/c",
        "/logs/kubelet.log",
        "/api/v1/nodes/n/proxy/logs/a/b.log",
        "/api/v1/nodes/n/proxy/containerLogs/ns/pod/c",
        "/api/v1/pods",
        "/api/v1/namespaces",
    ],
)
def test_new_routes_need_node_proxy_like_the_kubelet_catch_all(path: str) -> None:
    attrs = request_attributes("GET", path, "node-1")
    assert attrs is not None
    assert (attrs.resource, attrs.subresource, attrs.name) == ("nodes", "proxy", "node-1")
