"""The user-facing documents stand alone: they point at nothing outside the repository
(a clone has no ../shared), and every relative link in them reaches a file in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "ARCHITECTURE.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pointer_outside_the_repository(document: Path) -> None:
    text = document.read_text()
    assert "../shared" not in text and "shared/DESIGN" not in text


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_files_of_the_repository(document: Path) -> None:
    for target in LINK.findall(document.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        resolved = (document.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), (document.name, target)
        assert resolved.exists(), (document.name, target)


def test_the_user_documents_exist_and_are_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in ("docs/design.md", "docs/run.md", "docs/DEPLOY.md", "docs/http-api.md"):
        assert (ROOT / name).is_file(), name
        assert f"]({name}" in readme, name
