"""`10MB` means 10 MiB to some and 10,000,000 bytes to others: every place that takes a size
(the YAML config, `logvold run`'s Go-style flags, the containerd driver's pairs) refuses it
with the same did-you-mean, instead of silently picking one (issue #18)."""

from __future__ import annotations

import io
from contextlib import redirect_stderr

import pytest

from logvold.config_file import load_config_text
from logvold.driver_args import parse_driver_args
from logvold.errors import ConfigError
from logvold.runner.cli import main_run

DID_YOU_MEAN = "10MB is ambiguous: did you mean 10Mi (10,485,760 bytes) or 10M (10,000,000 bytes)?"
ENV = {"CONTAINER_ID": "abc123", "CONTAINER_NAMESPACE": "default"}


@pytest.mark.parametrize("key", ["maxSize", "maxTotalSize", "maxEventSize"])
def test_yaml_size_keys_refuse_si_suffixes_with_file_line_and_key(key: str) -> None:
    text = f"defaults:\n  rotate: Daily\n  {key}: 10MB\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "node.yaml")
    (problem,) = info.value.problems
    assert str(problem) == f"node.yaml:3: defaults.{key}: size {DID_YOU_MEAN}"


def test_yaml_volume_and_node_budgets_refuse_si_suffixes() -> None:
    text = "nodeMaxTotalSize: 20GB\nvolumes:\n  - {name: v, path: /x, maxTotalSize: 1GB}\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "node.yaml")
    keys = sorted((p.line, p.key) for p in info.value.problems)
    assert keys == [(1, "nodeMaxTotalSize"), (3, "volumes[0].maxTotalSize")]
    assert all("did you mean" in p.message for p in info.value.problems)


@pytest.mark.parametrize("flag", ["-log-file-size=10MB", "-max-event-size=10MB"])
def test_run_flags_refuse_si_suffixes_before_starting_anything(flag: str) -> None:
    err = io.StringIO()
    with redirect_stderr(err):
        code = main_run([flag, "-log-file=/nonexistent/dir/app.log", "true"], "logvold run")
    assert code == 2
    first = err.getvalue().splitlines()[0]
    assert DID_YOU_MEAN in first, first
    assert flag.split("=")[0] in first


def test_run_flags_still_take_quantity_spellings() -> None:
    err = io.StringIO()
    with redirect_stderr(err):
        code = main_run(["-log-file-size=10Mi", "-max-event-size=1M", "-h"], "logvold run")
    assert code == 0  # -h after valid flags: parsed, usage printed, nothing run


@pytest.mark.parametrize("key", ["max-size", "max-event-size"])
def test_driver_pairs_refuse_si_suffixes(key: str) -> None:
    with pytest.raises(ValueError, match=rf"{key} '10MB': size 10MB is ambiguous: did you mean"):
        parse_driver_args([key, "10MB"], ENV)
    assert parse_driver_args([key, "10Mi"], ENV).policy is not None
