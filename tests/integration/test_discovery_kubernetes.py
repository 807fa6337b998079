"""PodDiscovery with the real `kubernetes` client against a loopback API server.

The server is tests/support/fake_kube_api.py, not kube-apiserver: no API server,
etcd or envtest can be installed on these machines (ECOSYSTEM.md). It speaks
the real wire format of list, chunked watch (ADDED/MODIFIED/DELETED/BOOKMARK/
ERROR lines), 410 Expired and Event creation; everything on logvold's side
(kubeconfig loading, bearer auth, urllib3 streaming) is the production path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from logvold.core.policy import KubernetesConfig, LogPolicy
from logvold.core.streams import StreamInfo, StreamKey, StreamRegistry
from logvold.errors import LogvoldError
from logvold.sources.kubernetes import Backoff, PodDiscovery
from logvold.telemetry.metrics import Metrics
from tests.support.fake_kube_api import (
    FakeKubeApi,
    assert_valid_object,
    make_pod,
    running_fake_api,
)

NODE = "node-a"
KUBELET = "/var/lib/kubelet"
GOOD = """\
logs:
  app:
    rotate: Hourly
    maxSize: 5Mi
    subDir: app
    annotations:
      team: payments
"""


@pytest.fixture
def api() -> Iterator[FakeKubeApi]:
    with running_fake_api() as server:
        yield server


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def registry() -> StreamRegistry:
    return StreamRegistry()


@pytest.fixture
def discovery(
    api: FakeKubeApi, registry: StreamRegistry, metrics: Metrics, tmp_path: Path
) -> Iterator[PodDiscovery]:
    config = KubernetesConfig(
        enabled=True,
        node_name=NODE,
        kubelet_root=KUBELET,
        kubeconfig=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
    )
    d = PodDiscovery(
        config,
        registry,
        metrics,
        LogPolicy(max_files=3),
        backoff=Backoff(initial_s=0.05, max_s=0.2),
    )
    yield d
    d.stop()


def _keys(registry: StreamRegistry) -> set[str]:
    return {str(i.key) for i in registry.snapshot()}


def _watch_errors(metrics: Metrics, source: str) -> float:
    value = metrics.registry.get_sample_value("logvold_watch_errors_total", {"source": source})
    return value or 0.0


def test_streams_appear_update_and_disappear(
    api: FakeKubeApi, discovery: PodDiscovery, registry: StreamRegistry
) -> None:
    listed = api.add_pod(make_pod("web", node=NODE, annotation=GOOD, uid="uid-web"))
    api.add_pod(make_pod("elsewhere", node="node-b", annotation=GOOD))
    api.add_pod(make_pod("plain", node=NODE))  # no annotation: not ours
    changes: list[tuple[str, str]] = []
    registry.subscribe(lambda change, info: changes.append((change, str(info.key))))
    discovery.start()
    assert discovery.wait_synced(60)

    info = registry.get(StreamKey("default", "web", "app"))
    assert info is not None
    assert _keys(registry) == {"default/web/app"}
    assert info == StreamInfo(
        key=StreamKey("default", "web", "app"),
        directory=Path(KUBELET, "pods/uid-web/volumes/kubernetes.io~empty-dir/logs/app"),
        base="app.log",
        policy=info.policy,
        volume="logs",
        source="kubernetes",
        annotations={"team": "payments"},
        pod_uid="uid-web",
        root=Path(KUBELET, "pods/uid-web/volumes/kubernetes.io~empty-dir/logs"),
    )
    assert (info.policy.rotate, info.policy.max_size_bytes) == ("Hourly", 5 * 2**20)
    assert info.policy.max_files == 3  # from the node defaults, key by key
    lists = api.requests("GET", "/api/v1/pods")
    assert lists[0].query["fieldSelector"] == [f"spec.nodeName={NODE}"]
    assert "watch" not in lists[0].query

    # A pod added after the list arrives through the watch.
    api.add_pod(
        make_pod(
            "worker",
            node=NODE,
            namespace="jobs",
            containers=("main", "sidecar"),
            annotation="logs:\n  main: {}\n  sidecar: {format: cri}\n",
            uid="uid-worker",
        )
    )
    assert api.wait_for(lambda: len(registry) == 3)
    sidecar = registry.get(StreamKey("jobs", "worker", "sidecar"))
    assert sidecar is not None
    assert sidecar.policy.format == "cri"

    # MODIFIED: new policy replaces the stream's; a dropped container goes away.
    modified = make_pod(
        "worker",
        node=NODE,
        namespace="jobs",
        containers=("main", "sidecar"),
        annotation="logs:\n  main: {maxFiles: 9}\n",
        uid="uid-worker",
    )
    api.update_pod(modified)
    assert api.wait_for(lambda: _keys(registry) == {"default/web/app", "jobs/worker/main"})
    main = registry.get(StreamKey("jobs", "worker", "main"))
    assert main is not None
    assert main.policy.max_files == 9

    # Annotation removed -> streams removed; pod deleted -> streams removed.
    api.update_pod(make_pod("web", node=NODE, uid="uid-web"))
    assert api.wait_for(lambda: _keys(registry) == {"jobs/worker/main"})
    api.delete_pod("uid-worker")
    assert api.wait_for(lambda: len(registry) == 0)
    assert ("removed", "jobs/worker/sidecar") in changes
    assert ("updated", "jobs/worker/main") in changes
    assert listed["metadata"]["resourceVersion"]
    assert discovery.relists == 1


def test_resumes_after_disconnect_without_missing_events(
    api: FakeKubeApi, discovery: PodDiscovery, registry: StreamRegistry, metrics: Metrics
) -> None:
    first = api.add_pod(make_pod("a", node=NODE, annotation=GOOD))
    discovery.start()
    assert discovery.wait_synced(60)
    assert api.wait_for(lambda: len(api.requests("GET", "/api/v1/pods")) >= 2)  # watch open

    # Cut the watch and keep the server refusing new ones while pods change.
    api.state.refuse_watches = True
    api.drop_watches()
    assert api.wait_for(lambda: _watch_errors(metrics, "kubernetes") >= 2)
    api.delete_pod(first["metadata"]["uid"])
    second = api.add_pod(make_pod("b", node=NODE, annotation=GOOD))
    api.add_pod(make_pod("c", node=NODE, annotation=GOOD))
    api.update_pod({**second, "metadata": {**second["metadata"], "labels": {"x": "y"}}})
    api.state.refuse_watches = False

    assert api.wait_for(lambda: _keys(registry) == {"default/b/app", "default/c/app"})
    # It resumed from the last resourceVersion it saw instead of listing again.
    assert discovery.relists == 1
    watches = [r for r in api.requests("GET", "/api/v1/pods") if "watch" in r.query]
    resumed = watches[-1].query["resourceVersion"][0]
    assert resumed == first["metadata"]["resourceVersion"]
    assert watches[-1].query["allowWatchBookmarks"] == ["true"]


def test_relists_after_410_gone(
    api: FakeKubeApi, discovery: PodDiscovery, registry: StreamRegistry, metrics: Metrics
) -> None:
    gone = api.add_pod(make_pod("old", node=NODE, annotation=GOOD))
    discovery.start()
    assert discovery.wait_synced(60)
    assert api.wait_for(lambda: len(api.requests("GET", "/api/v1/pods")) >= 2)

    # Changes happen while the watch is down, then history is compacted: the
    # resourceVersion logvold holds is too old, only a fresh list can catch up.
    api.state.refuse_watches = True
    api.drop_watches()
    assert api.wait_for(lambda: _watch_errors(metrics, "kubernetes") >= 1)
    api.delete_pod(gone["metadata"]["uid"])
    api.add_pod(make_pod("new", node=NODE, annotation=GOOD))
    api.compact()
    api.state.refuse_watches = False

    assert api.wait_for(lambda: _keys(registry) == {"default/new/app"})
    assert discovery.relists == 2
    # The watch from the stale version got 410, the relist, then a watch from the new list.
    lists = [r for r in api.requests("GET", "/api/v1/pods") if "watch" not in r.query]
    assert len(lists) == 2
    assert api.wait_for(lambda: "resourceVersion" in api.requests()[-1].query)
    watches = [r.query["resourceVersion"][0] for r in api.requests() if "watch" in r.query]
    assert gone["metadata"]["resourceVersion"] in watches
    assert int(watches[-1]) > int(gone["metadata"]["resourceVersion"]) + 1
    # 410 is the protocol working, not an error: only the cut and the refusals count.
    assert _watch_errors(metrics, "kubernetes") == 1 + api.state.refused_watches


def test_bad_annotation_posts_an_event_and_others_keep_working(
    api: FakeKubeApi,
    discovery: PodDiscovery,
    registry: StreamRegistry,
    metrics: Metrics,
    tmp_path: Path,
) -> None:
    api.add_pod(make_pod("good", node=NODE, annotation=GOOD))
    bad = api.add_pod(
        make_pod("bad", node=NODE, annotation="logs:\n  app:\n    rotate: Weekly\n", uid="uid-bad")
    )
    discovery.start()
    assert discovery.wait_synced(60)
    assert _keys(registry) == {"default/good/app"}
    assert api.wait_for(lambda: len(api.events()) == 1)
    event = api.events()[0]
    assert event["reason"] == "InvalidLogPolicy"
    assert event["type"] == "Warning"
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": "default",
        "name": "bad",
        "uid": "uid-bad",
    }
    assert event["source"] == {"component": "logvold", "host": NODE}
    assert "logvold.io/logs" in event["message"]
    assert "line 3: logs.app.rotate" in event["message"]
    assert "Weekly" in event["message"]
    assert _watch_errors(metrics, "annotation") == 1
    assert_valid_object(event, tmp_path)  # field names as the 1.33 API defines them

    # The same bad text again (a status update) is not reported twice ...
    api.update_pod({**bad, "status": {"phase": "Running", "podIP": "10.0.0.9"}})
    # ... a volume that is not an emptyDir, or unknown, is a new problem.
    wrong_volume = make_pod(
        "bad", node=NODE, uid="uid-bad", annotation="config:\n  app: {}\nnope:\n  app: {}\n"
    )
    api.update_pod(wrong_volume)
    assert api.wait_for(lambda: len(api.events()) == 2)
    message = api.events()[1]["message"]
    assert "only emptyDir volumes are managed" in message
    assert "the pod has no volume 'nope'" in message

    # Fixing the annotation brings the stream; the good pod never stopped.
    api.update_pod(make_pod("bad", node=NODE, uid="uid-bad", annotation=GOOD))
    assert api.wait_for(lambda: _keys(registry) == {"default/good/app", "default/bad/app"})
    assert len(api.events()) == 2
    # A later breakage keeps the streams it had, and says so.
    api.update_pod(make_pod("bad", node=NODE, uid="uid-bad", annotation="logs: [1, 2]\n"))
    assert api.wait_for(lambda: len(api.events()) == 3)
    assert "keeping its 1 stream(s)" in api.events()[2]["message"]
    assert _keys(registry) == {"default/good/app", "default/bad/app"}


def test_yaml_syntax_error_and_reopen_are_rejected(
    api: FakeKubeApi, discovery: PodDiscovery, registry: StreamRegistry
) -> None:
    api.add_pod(make_pod("syntax", node=NODE, annotation="logs:\n  app: {rotate: Daily\n"))
    api.add_pod(
        make_pod(
            "escape",
            node=NODE,
            annotation="logs:\n  app:\n    strategy: rename\n    reopen: {command: [sh, -c, id]}\n",
        )
    )
    discovery.start()
    assert discovery.wait_synced(60)
    assert api.wait_for(lambda: len(api.events()) == 2)
    messages = {e["involvedObject"]["name"]: e["message"] for e in api.events()}
    assert "invalid YAML" in messages["syntax"]
    assert "logs.app.reopen: not allowed in a pod annotation" in messages["escape"]
    assert len(registry) == 0


def test_stream_of_the_static_config_is_not_taken_over(
    api: FakeKubeApi, discovery: PodDiscovery, registry: StreamRegistry, metrics: Metrics
) -> None:
    static = StreamInfo(
        key=StreamKey("default", "web", "app"),
        directory=Path("/srv/logs"),
        base="app.log",
        policy=LogPolicy(),
        volume="local",
    )
    registry.put(static)
    api.add_pod(make_pod("web", node=NODE, annotation=GOOD))
    api.add_pod(make_pod("other", node=NODE, annotation=GOOD))
    discovery.start()
    assert discovery.wait_synced(60)
    assert registry.get(static.key) == static
    assert _keys(registry) == {"default/web/app", "default/other/app"}
    assert _watch_errors(metrics, "annotation") == 1


def test_stop_closes_an_idle_watch_promptly(api: FakeKubeApi, discovery: PodDiscovery) -> None:
    discovery.start()
    assert discovery.wait_synced(60)
    assert api.wait_for(lambda: any("watch" in r.query for r in api.requests()))
    started = time.monotonic()
    discovery.stop()
    # The idle watch would last its timeoutSeconds (300-600 s): stop() did not wait for it.
    assert time.monotonic() - started < 60.0


def test_new_defaults_recompute_every_pod_policy(
    api: FakeKubeApi, discovery: PodDiscovery, registry: StreamRegistry, metrics: Metrics
) -> None:
    api.add_pod(make_pod("web", node=NODE, annotation=GOOD))
    discovery.start()
    assert discovery.wait_synced(60)
    assert api.wait_for(lambda: any("watch" in r.query for r in api.requests()))
    key = StreamKey("default", "web", "app")
    info = registry.get(key)
    assert info is not None
    assert (info.policy.max_files, info.policy.compress) == (3, "none")
    updates: list[str] = []
    registry.subscribe(lambda change, i: updates.append(f"{change} {i.key}"))

    discovery.update_defaults(LogPolicy(max_files=8, compress="gzip"))

    def recomputed() -> bool:
        current = registry.get(key)
        return current is not None and current.policy.compress == "gzip"

    assert api.wait_for(recomputed)
    current = registry.get(key)
    assert current is not None
    assert current.policy.max_files == 8
    assert current.policy.max_size_bytes == 5 * 2**20  # the annotation still overrides
    assert updates == ["updated default/web/app"]
    assert discovery.relists == 2
    assert _watch_errors(metrics, "kubernetes") == 0


@pytest.mark.parametrize(
    ("kubeconfig", "expected"),
    [
        ("missing", "cannot load Kubernetes credentials from {path}: Invalid kube-config file"),
        ("broken", "cannot load Kubernetes credentials from {path}: "),
        ("", "cannot load Kubernetes credentials from the in-cluster service account"),
    ],
    ids=["missing-file", "broken-yaml", "not-in-a-pod"],
)
def test_missing_credentials_are_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kubeconfig: str, expected: str
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = tmp_path / "kubeconfig"
    if kubeconfig == "broken":
        path.write_text("clusters: [\n")
    config = KubernetesConfig(enabled=True, kubeconfig=str(path) if kubeconfig else "")
    discovery = PodDiscovery(config, StreamRegistry(), None, LogPolicy())
    with pytest.raises(LogvoldError) as caught:
        discovery.start()
    assert str(caught.value).startswith(expected.format(path=path))
    assert str(caught.value).endswith("set kubernetes.kubeconfig or run inside a pod")
    discovery.stop()  # never started: a no-op


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(initial_s=0.5, max_s=30.0)
    for failures, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (50, 30.0)]:
        delays = {backoff.delay_s(failures) for _ in range(200)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (failures, delays)
        assert len(delays) > 100  # jittered, so restarted nodes do not stampede the API


def _over_cap(metrics: Metrics, volume: str) -> float | None:
    return metrics.registry.get_sample_value("logvold_streams_over_cap", {"volume": volume})


def test_a_pod_over_the_stream_cap_gets_one_warning_event(
    api: FakeKubeApi,
    discovery: PodDiscovery,
    registry: StreamRegistry,
    metrics: Metrics,
    tmp_path: Path,
) -> None:
    discovery.max_streams_per_volume = 3
    names = tuple(f"c{i}" for i in range(6))
    many = "logs:\n" + "".join(f"  {n}: {{}}\n" for n in names)
    pod = api.add_pod(
        make_pod("wide", node=NODE, annotation=many, containers=names, uid="uid-wide")
    )
    api.add_pod(make_pod("good", node=NODE, annotation=GOOD))
    discovery.start()
    assert discovery.wait_synced(60)
    # The first three by container name are managed; the others are refused.
    assert _keys(registry) == {
        "default/good/app",
        "default/wide/c0",
        "default/wide/c1",
        "default/wide/c2",
    }
    assert api.wait_for(lambda: len(api.events()) == 1)
    event = api.events()[0]
    assert event["reason"] == "TooManyLogStreams" and event["type"] == "Warning"
    assert event["involvedObject"]["uid"] == "uid-wide"
    assert "volume logs: 3 refused (c3, c4, c5)" in event["message"]
    assert_valid_object(event, tmp_path)
    assert _over_cap(metrics, "default/wide/logs") == 3
    # A status update with the same annotation is not reported again.
    api.update_pod({**pod, "status": {"phase": "Running", "podIP": "10.0.0.7"}})
    api.update_pod(make_pod("good", node=NODE, annotation=GOOD + "    maxFiles: 2\n"))

    def good_keeps_two_files() -> bool:
        info = registry.get(StreamKey("default", "good", "app"))
        return info is not None and info.policy.max_files == 2

    assert api.wait_for(good_keeps_two_files)
    assert len(api.events()) == 1
    # Within the cap again: the series goes away, no new Event.
    api.update_pod(
        make_pod(
            "wide", node=NODE, annotation="logs:\n  c0: {}\n", containers=names, uid="uid-wide"
        )
    )
    assert api.wait_for(lambda: _over_cap(metrics, "default/wide/logs") is None)
    assert api.wait_for(lambda: "default/wide/c1" not in _keys(registry))
    assert len(api.events()) == 1
