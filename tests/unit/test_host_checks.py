"""Host checks: volume paths that exist, and a systemd unit's sandbox read from its file
(ProtectSystem, ReadWritePaths and the directories that imply them, drop-ins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from logvold.config.host_checks import UNIT_ENV, find_unit, host_problems, read_unit_sandbox
from logvold.config.yaml_file import load_config_text, parse_yaml_tree
from logvold.core.config_tree import KeyPath
from logvold.core.policy import Config

REPO_UNIT = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "logvold.service"


def _unit(tmp_path: Path, body: str, name: str = "logvold.service") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def _config(text: str) -> tuple[Config, dict[KeyPath, int]]:
    return load_config_text(text, "c.yaml"), parse_yaml_tree(text, "c.yaml")[1]


@pytest.mark.parametrize(
    ("path", "writable"),
    [
        pytest.param("/var/lib/kubelet/pods/uid/volumes", True, id="below-ReadWritePaths"),
        pytest.param("/var/log/pods", True, id="a-ReadWritePaths-entry"),
        pytest.param("/var/lib/logvold/x", True, id="StateDirectory"),
        pytest.param("/var/log/pods-static/web", False, id="sibling-prefix-is-not-inside"),
        pytest.param("/srv/logs", False, id="elsewhere"),
        pytest.param("/tmp/logs", False, id="PrivateTmp"),
        pytest.param("/home/app/logs", False, id="ProtectHome"),
    ],
)
def test_the_shipped_unit_allows_exactly_its_writable_paths(path: str, writable: bool) -> None:
    sandbox = read_unit_sandbox(REPO_UNIT, search_drop_ins=False)
    assert sandbox.protect_system == "strict"
    assert (sandbox.why_not_writable(path) is None) == writable


def test_drop_ins_add_paths_and_an_empty_assignment_resets(tmp_path: Path) -> None:
    unit = _unit(
        tmp_path,
        "[Unit]\nDescription=x\n[Service]\nProtectSystem=strict\n"
        "ReadWritePaths=/a \\\n  -/b\n# ReadWritePaths=/commented\n",
    )
    base = read_unit_sandbox(unit, search_drop_ins=False)
    assert base.read_write_paths == ("/a", "/b")
    drop_in = tmp_path / "logvold.service.d"
    drop_in.mkdir()
    (drop_in / "10-more.conf").write_text("[Service]\nReadWritePaths=/srv/app/logs\n")
    assert (
        read_unit_sandbox(unit, search_drop_ins=False).why_not_writable("/srv/app/logs/x") is None
    )
    (drop_in / "20-reset.conf").write_text("[Service]\nReadWritePaths=\nReadWritePaths=/c\n")
    assert read_unit_sandbox(unit, search_drop_ins=False).read_write_paths == ("/c",)


def test_the_most_specific_rule_wins(tmp_path: Path) -> None:
    unit = _unit(
        tmp_path,
        "[Service]\nProtectSystem=strict\nReadWritePaths=/data\nReadOnlyPaths=/data/archive\n",
    )
    sandbox = read_unit_sandbox(unit, search_drop_ins=False)
    assert sandbox.why_not_writable("/data/live") is None
    assert "ReadOnlyPaths=" in str(sandbox.why_not_writable("/data/archive/x"))


def test_protect_system_full_leaves_var_writable(tmp_path: Path) -> None:
    sandbox = read_unit_sandbox(
        _unit(tmp_path, "[Service]\nProtectSystem=full\n"), search_drop_ins=False
    )
    assert sandbox.why_not_writable("/var/log/app") is None
    assert sandbox.why_not_writable("/etc/app") is not None


def test_missing_volume_and_unwritable_volume_name_file_line_and_key(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    text = f"volumes:\n  - name: a\n    path: {tmp_path}\n  - name: b\n    path: {missing}\n"
    config, lines = _config(text)
    sandbox = read_unit_sandbox(REPO_UNIT, search_drop_ins=False)
    problems = host_problems(config, lines=lines, unit=sandbox)
    shown = [str(p) for p in problems]
    assert shown[0] == (
        f"c.yaml:3: volumes[0].path: {tmp_path} is not writable under the "
        f"systemd unit {REPO_UNIT} (PrivateTmp=yes gives the service its own "
        "empty /tmp and /var/tmp); move the volume out of /tmp and /var/tmp"
    )
    assert shown[1] == (
        f"c.yaml:5: volumes[1].path: {missing} does not exist; create it "
        f"(mkdir -p {missing}) or correct the path"
    )
    assert len(shown) == 3 and shown[2].startswith("c.yaml:5: volumes[1].path: ")
    # Without a unit only existence counts; the daemon's own `local` volume is exempt.
    assert [p.key for p in host_problems(config, lines=lines)] == ["volumes[1].path"]
    assert host_problems(config, created=("b",)) == []


def test_a_file_is_not_a_volume(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    config, _ = _config(f"volumes:\n  - {{name: a, path: {tmp_path / 'f'}}}\n")
    (problem,) = host_problems(config)
    assert "is not a directory" in problem.message


def test_kubelet_root_is_checked_against_the_unit(tmp_path: Path) -> None:
    config, lines = _config("kubernetes:\n  enabled: true\n  kubeletRoot: /srv/kubelet\n")
    unit = _unit(tmp_path, "[Service]\nProtectSystem=strict\nReadWritePaths=/var/lib/kubelet\n")
    (problem,) = host_problems(
        config, lines=lines, unit=read_unit_sandbox(unit, search_drop_ins=False)
    )
    assert (problem.line, problem.key) == (3, "kubernetes.kubeletRoot")
    assert "/srv/kubelet/pods is not writable" in problem.message
    assert "ReadWritePaths=/srv/kubelet/pods" in problem.message


def test_find_unit_honours_the_override(tmp_path: Path) -> None:
    unit = _unit(tmp_path, "[Service]\n")
    assert find_unit({UNIT_ENV: str(unit)}, running=True) == unit
    assert find_unit({UNIT_ENV: str(unit)}, running=False) == unit
    assert find_unit({UNIT_ENV: ""}, running=False) is None
    assert find_unit({UNIT_ENV: str(tmp_path / "absent.service")}, running=False) is None
    # Outside a logvold unit (this test process), serve judges no sandbox.
    assert find_unit({}, running=True) is None


def test_a_reload_judges_only_what_it_adds_or_changes(tmp_path: Path) -> None:
    gone, new = tmp_path / "gone", tmp_path / "new"
    running, _ = _config(f"volumes:\n  - {{name: a, path: {gone}}}\n")
    reload, lines = _config(
        f"volumes:\n  - {{name: a, path: {gone}}}\n  - {{name: b, path: {new}}}\n"
    )
    # `a` vanished while running (the scan logs and counts it): not a reason to refuse;
    # `b` is new and missing: refused, with its line.
    problems = host_problems(reload, lines=lines, previous=running)
    assert [(p.line, p.key) for p in problems] == [(3, "volumes[1].path")]
    moved, _ = _config(f"volumes:\n  - {{name: a, path: {new}}}\n")
    assert [p.key for p in host_problems(moved, previous=running)] == ["volumes[0].path"]
