"""The sdist as a real build makes it (python -m build, an isolated env with the
pyproject's build backend): it carries what an operator installs from (docs, manifests,
the systemd unit, the example config), and its metadata matches the LICENSE file."""

from __future__ import annotations

import email.parser
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (archive,) = out.glob("logvold-*.tar.gz")
    return archive


def _tracked(*dirs: str) -> set[str]:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", *dirs],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {line for line in result.stdout.splitlines() if (ROOT / line).is_file()}


def test_sdist_carries_docs_manifests_packaging_and_the_example_config(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.removeprefix(top + "/") for n in tar.getnames()}
    wanted = _tracked("docs", "manifests", "packaging") | {
        "config.example.yaml",
        "LICENSE",
        "README.md",
        "Dockerfile",
    }
    assert wanted <= names, sorted(wanted - names)
    assert "packaging/systemd/logvold.service" in names
    assert "manifests/kustomization.yaml" in names and "docs/run.md" in names
    assert "logvold/core/units.py" in names
    # The C escaper's source (built from the sdist; optional) but no built object.
    assert "logvold/core/_json_lines.c" in names
    assert not any(n.endswith(".so") for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_sdist_metadata_matches_the_license_file(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        pkg_info = tar.extractfile(f"{top}/PKG-INFO")
        license_file = tar.extractfile(f"{top}/LICENSE")
        assert pkg_info is not None and license_file is not None
        meta = email.parser.Parser().parsestr(pkg_info.read().decode())
        shipped_license = license_file.read()
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert shipped_license == (ROOT / "LICENSE").read_bytes()
    text = shipped_license.decode()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    classifiers = meta.get_all("Classifier")
    project_urls = meta.get_all("Project-URL")
    assert classifiers is not None and project_urls is not None
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers
    urls = dict(u.split(", ", 1) for u in project_urls)
    assert set(urls) >= {"Homepage", "Documentation", "Source", "Issues"}
    assert all(u.startswith("https://github.com/logvold/logvold") for u in urls.values())
    assert meta["Requires-Python"] == ">=3.11"
