"""manifests/: real kubernetes-validate (1.33 schemas), kubectl kustomize,
promtool check/test rules; our own checks where no schema exists (the
prometheus-operator CRDs) and where the files must agree with the code
(metric names, config keys, RBAC of what discovery and auth call).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from logvold.config.yaml_file import load_config, parse_yaml_tree
from logvold.telemetry.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.33"
RESOURCE_FILES = sorted(
    p.name for p in MANIFESTS.glob("*.yaml") if p.name not in ("config.yaml", "kustomization.yaml")
)
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
REQUIRED_ALERTS = {
    "LogvoldDown",
    "LogvoldLostBytes",
    "LogvoldRotationFailures",
    "LogvoldDiskBudget",
    "LogvoldReloadFailures",
}


def _load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((MANIFESTS / name).read_text())
    assert isinstance(doc, dict)
    return doc


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return found


def exposed_metric_names() -> set[str]:
    """Every sample name logvold's Metrics can expose, labelled or not."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {
            "counter": ("_total", "_created"),
            "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "info": ("_info",),
        }[family.type]
        names.update(family.name + s for s in suffixes)
    return names


def _metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(?:logvold|process)_[a-z0-9_]+", expr))


# --- kubernetes-validate --------------------------------------------------------------------


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("name", RESOURCE_FILES)
def test_manifest_validates_against_the_1_33_schemas(name: str) -> None:
    result = _validate(MANIFESTS / name)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    kind = _load(name)["kind"]
    if kind in CRD_KINDS:  # no schema bundled: structure checked below
        assert "Couldn't find schema for kind " + kind in output
    else:
        assert f"passed for resource {kind.lower()}/" in output, output


def test_validator_rejects_an_unknown_field(tmp_path: Path) -> None:
    daemonset = _load("daemonset.yaml")
    daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilegd"] = False
    broken = tmp_path / "daemonset.yaml"
    broken.write_text(yaml.safe_dump(daemonset))
    result = _validate(broken)
    assert result.returncode == 1
    assert "privilegd" in result.stdout + result.stderr


# --- kustomize --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    result = subprocess.run(
        [_tool("kubectl"), "kustomize", str(MANIFESTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path_factory.mktemp("kustomize") / "all.yaml"
    out.write_text(result.stdout)
    validated = _validate(out)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_kustomize_renders_every_resource_in_the_namespace(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "ConfigMap",
            "DaemonSet",
            "Service",
            "ServiceAccount",
            "Secret",
            "ClusterRole",
            "ClusterRoleBinding",
            "ServiceMonitor",
            "PrometheusRule",
        ]
    )
    for doc in rendered:
        if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "logvold", doc["kind"]


def test_daemonset_mounts_the_generated_config(rendered: list[dict[str, Any]]) -> None:
    (config_map,) = [
        d
        for d in rendered
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("logvold-config-")
    ]
    (daemonset,) = [d for d in rendered if d["kind"] == "DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_map["data"]["config.yaml"] == (MANIFESTS / "config.yaml").read_text()
    container = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert container["args"] == ["--config", f"{mounts['config']}/config.yaml"]


# --- the DaemonSet's promises -----------------------------------------------------------------


def test_daemonset_runs_with_minimal_privileges_and_probes() -> None:
    pod = _load("daemonset.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(security["capabilities"]["add"]) == {"DAC_OVERRIDE", "FOWNER", "CHOWN"}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert pod["hostPID"] is False
    assert pod["tolerations"] == [{"operator": "Exists"}]
    # /livez fails when the reconcile loop stalls (tests/integration/test_daemon_livez.py).
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    (node_name,) = [e for e in container["env"] if e["name"] == "NODE_NAME"]
    assert node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"

    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    read_only = {host_paths[n] for n, m in mounts.items() if n in host_paths and m.get("readOnly")}
    writable = {
        host_paths[n] for n, m in mounts.items() if n in host_paths and not m.get("readOnly")
    }
    # Writable only where logvold writes: the pods' emptyDir logging volumes.
    assert writable == {"/var/lib/kubelet/pods"}
    assert {"/var/log", "/run/log/journal", "/etc/machine-id"} <= read_only
    # /var/log/journal is read-only as part of /var/log.
    assert mounts["var-log"]["mountPath"] == "/var/log"
    # Config paths of the DaemonSet's config agree with its mounts.
    config = load_config(MANIFESTS / "config.yaml")
    assert config.kubernetes.enabled
    assert config.kubernetes.kubelet_root + "/pods" in {m["mountPath"] for m in mounts.values()}
    assert config.server.auth == "kubernetes"
    port = container["ports"][0]["containerPort"]
    assert config.server.listen == f"0.0.0.0:{port}"
    # All interfaces only with TLS from the mounted Secret and token auth.
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    tls_mount = mounts["tls"]
    assert secrets["tls"] == "logvold-tls" and tls_mount["readOnly"] is True
    assert config.server.tls_cert_file == tls_mount["mountPath"] + "/tls.crt"
    assert config.server.tls_key_file == tls_mount["mountPath"] + "/tls.key"
    assert not tls_mount["mountPath"].startswith(mounts["config"]["mountPath"] + "/")


def test_rbac_grants_exactly_what_discovery_and_auth_call() -> None:
    rules = {
        (group, resource): set(rule["verbs"])
        for rule in _load("clusterrole.yaml")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert rules == {
        ("", "pods"): {"get", "list", "watch"},
        ("", "events"): {"create", "patch"},
        ("authentication.k8s.io", "tokenreviews"): {"create"},
        ("authorization.k8s.io", "subjectaccessreviews"): {"create"},
    }
    binding = _load("clusterrolebinding.yaml")
    account = _load("serviceaccount.yaml")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]
    assert _load("daemonset.yaml")["spec"]["template"]["spec"]["serviceAccountName"] == "logvold"


def test_config_yaml_uses_only_documented_keys() -> None:
    def key_paths(path: Path) -> set[str]:
        _, lines = parse_yaml_tree(path.read_text(), str(path))
        return {".".join(str(k) for k in p if not isinstance(k, int)) for p in lines}

    documented = key_paths(ROOT / "config.example.yaml")
    used = key_paths(MANIFESTS / "config.yaml")
    assert used <= documented, sorted(used - documented)
    assert {"server.auth.mode", "kubernetes.enabled", "nodeLogQuery.journal"} <= used


# --- prometheus-operator objects (no schema in kubernetes-validate) ---------------------------


def test_service_monitor_scrapes_the_service() -> None:
    monitor = _load("servicemonitor.yaml")
    service = _load("service.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "namespaceSelector", "endpoints"}
    labels = monitor["spec"]["selector"]["matchLabels"]
    assert labels.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    token_secret = _load("metrics-reader-token.yaml")
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {
            "port", "path", "interval", "scheme", "honorLabels", "authorization", "tlsConfig",
            "relabelings",
        }  # fmt: skip
        assert endpoint["port"] in port_names
        # A token goes over TLS only, from a Secret (bearerTokenFile is deprecated).
        assert endpoint["scheme"] == "https"
        assert endpoint["authorization"] == {
            "type": "Bearer",
            "credentials": {"name": token_secret["metadata"]["name"], "key": "token"},
        }
        assert endpoint["tlsConfig"]["ca"]["secret"]["name"] == "logvold-tls"
        assert endpoint["tlsConfig"]["serverName"]
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
        for relabel in endpoint["relabelings"]:
            assert relabel["action"] in ("replace", "keep", "drop", "labelmap")
    daemonset_labels = _load("daemonset.yaml")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= daemonset_labels.items()


def test_the_metrics_token_belongs_to_an_account_that_may_read_only_nodes_metrics() -> None:
    secret = _load("metrics-reader-token.yaml")
    account = _load("metrics-reader-serviceaccount.yaml")["metadata"]
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert (
        secret["metadata"]["annotations"]["kubernetes.io/service-account.name"] == (account["name"])
    )
    assert (
        secret["metadata"]["namespace"] == _load("servicemonitor.yaml")["metadata"]["namespace"]
    )  # prometheus-operator reads credentials from the monitor's namespace
    role = _load("metrics-reader-clusterrole.yaml")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]}]
    binding = _load("metrics-reader-clusterrolebinding.yaml")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]


def test_prometheus_rule_structure_and_metric_names() -> None:
    rule = _load("prometheusrule.yaml")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    known = exposed_metric_names()
    alerts = set()
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for r in group["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}
            alerts.add(r["alert"])
            assert r["labels"]["severity"] in ("info", "warning", "critical")
            assert {"summary", "description"} <= set(r["annotations"])
            names = _metric_names_in(r["expr"])
            assert names, r["alert"]
            assert names <= known, f"{r['alert']}: unknown {sorted(names - known)}"
    assert alerts >= REQUIRED_ALERTS


# --- promtool ---------------------------------------------------------------------------------


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    if shutil.which("promtool") is None:
        print("SKIP reason: promtool not installed (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt package prometheus)")
    return tmp_path


def test_plain_rule_file_equals_the_prometheusrule_spec() -> None:
    """manifests/rules/logvold.rules.yaml is what `promtool` and a Prometheus without the
    operator load; it must say exactly what the PrometheusRule object says."""
    plain = yaml.safe_load((MANIFESTS / "rules" / "logvold.rules.yaml").read_text())
    assert plain == _load("prometheusrule.yaml")["spec"]


def test_promtool_checks_the_rules(rules_dir: Path) -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(MANIFESTS / "rules" / "logvold.rules.yaml")],
        cwd=rules_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(g["rules"]) for g in _load("prometheusrule.yaml")["spec"]["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_promtool_alert_unit_tests_pass(rules_dir: Path) -> None:
    """Exactly the documented command, on the shipped files as they are."""
    tests = sorted(str(p.relative_to(ROOT)) for p in (MANIFESTS / "tests").glob("*.yaml"))
    result = subprocess.run(
        ["promtool", "test", "rules", *tests],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tested = set(
        re.findall(r"alertname: (\w+)", (MANIFESTS / "tests" / "alerts_test.yaml").read_text())
    )
    rules = _load("prometheusrule.yaml")["spec"]["groups"][0]["rules"]
    assert tested == {r["alert"] for r in rules}  # every alert has a unit test


def test_promtool_catches_a_broken_expression(rules_dir: Path) -> None:
    spec = _load("prometheusrule.yaml")["spec"]
    spec["groups"][0]["rules"][0]["expr"] = "sum by (node (logvold_streams)"
    (rules_dir / "broken.yaml").write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        ["promtool", "check", "rules", "broken.yaml"],
        cwd=rules_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1


# --- grafana ----------------------------------------------------------------------------------


def test_grafana_dashboard_queries_existing_metrics() -> None:
    dashboard = json.loads((MANIFESTS / "grafana-dashboard.json").read_text())
    known = exposed_metric_names()
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    used: set[str] = set()
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            names = _metric_names_in(target["expr"])
            assert names, (panel["title"], target["expr"])
            assert names <= known, f"{panel['title']}: unknown {sorted(names - known)}"
            assert 'node=~"$node"' in target["expr"]
            used |= names
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "node"}
    # Every metric family appears on the dashboard (histograms through _bucket/_sum/_count).
    families = {re.sub(r"_(total|bucket|sum|count|info)$", "", n) for n in used}
    expected = {
        re.sub(r"_(total|bucket|sum|count|info|created)$", "", n)
        for n in known
        if not n.startswith("python_")
    }  # the platform collector's python_info
    assert families == expected, sorted(expected - families)
