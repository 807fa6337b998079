"""Typed step markers (core/steps.py): the state file's format as main wrote it loads into
the typed markers and saves back byte for byte; every forged or damaged marker loads as a
RefusedStep naming the reason, never as an exception or a step to act on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from logvold.core.steps import (
    CollapseStep,
    CopytruncateStep,
    PieceMark,
    PiecesStep,
    PunchStep,
    RefusedStep,
    RenameStep,
    TrimStep,
    step_from_dict,
    step_to_dict,
)
from logvold.errors import StateError
from logvold.fileio.state import load_state, save_state, state_path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "state-v1"
"""State files written by main's code before the markers were typed (untyped dicts), one
per step kind, and one left by main's own rotator killed inside a punch copy."""
STEM = "app.log.20261130-120000.0001"
STEM2 = "app.log.20261130-120000.0002"


@pytest.mark.parametrize(
    ("fixture", "kind"),
    [
        ("none", type(None)),
        ("punch", PunchStep),
        ("pieces", PiecesStep),
        ("collapse", CollapseStep),
        ("rename", RenameStep),
        ("copytruncate", CopytruncateStep),
        ("trim", TrimStep),
        ("punch-crashed-by-main", PunchStep),
    ],
)
def test_a_state_file_written_by_main_loads_typed_and_saves_back_byte_for_byte(
    tmp_path: Path, fixture: str, kind: type
) -> None:
    raw = (FIXTURES / f"{fixture}.state.json").read_bytes()
    state_path(tmp_path, "app.log").parent.mkdir()
    shutil.copy(FIXTURES / f"{fixture}.state.json", state_path(tmp_path, "app.log"))
    state = load_state(tmp_path, "app.log")
    assert state is not None and isinstance(state.intent, kind), state
    save_state(tmp_path, "app.log", state)
    assert state_path(tmp_path, "app.log").read_bytes() == raw


def test_the_fixture_markers_carry_their_fields() -> None:
    def marker(name: str) -> Any:
        return json.loads((FIXTURES / f"{name}.state.json").read_bytes())["intent"]

    assert step_from_dict(marker("punch"), "app.log") == PunchStep(stem=STEM, start=4096, end=8192)
    assert step_from_dict(marker("pieces"), "app.log") == PiecesStep(
        pieces=(PieceMark(STEM, 4096, 8192), PieceMark(STEM2, 8192, 9000))
    )
    assert step_from_dict(marker("collapse"), "app.log") == CollapseStep(
        length=4096, collapsed_before=0
    )
    assert step_from_dict(marker("rename"), "app.log") == RenameStep(
        stem=STEM, device=2049, inode=1234
    )
    assert step_from_dict(marker("copytruncate"), "app.log") == CopytruncateStep(
        stem=STEM, start=4096, end=8192, physical_end=8192
    )
    assert step_from_dict(marker("trim"), "app.log") == TrimStep(
        stem="app.log.20261130-115959.0001", size=1000
    )
    for name in ("punch", "pieces", "collapse", "rename", "copytruncate", "trim"):
        assert step_to_dict(step_from_dict(marker(name), "app.log")) == marker(name)  # type: ignore[arg-type]


def _punch(**kw: object) -> dict[str, object]:
    return {"op": "punch", "stem": STEM, "start": 10, "end": 20, **kw}


FORGED: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-op", {"op": "format-disk", "stem": STEM}, "unknown step"),
    ("long-op", {"op": "x" * 5000}, "unknown step"),
    ("missing-key", {"op": "punch", "stem": STEM, "start": 1}, "missing ['end']"),
    ("extra-key", _punch(path="/etc/shadow"), "unexpected ['path']"),
    ("old-offset-shape", {"op": "punch", "offset": 5}, "missing"),
    ("string-offset", _punch(start="10"), "start must be an integer"),
    ("float-offset", _punch(end=20.5), "end must be an integer"),
    ("bool-offset", _punch(start=True), "start must be an integer"),
    ("negative", _punch(start=-1), "start must be an integer"),
    ("past-off_t", _punch(end=2**63), "end must be an integer"),
    ("huge", _punch(end=10**4000), "end must be an integer"),
    ("null-offset", _punch(start=None), "start must be an integer"),
    ("ends-before-start", _punch(start=30), "ends (20) before it starts (30)"),
    ("stem-parent", _punch(stem="../other/app.log.20261130-120000.0001"), "not a segment"),
    ("stem-absolute", _punch(stem="/var/log/syslog"), "not a segment"),
    ("stem-other-file", _punch(stem="other.log"), "not a segment"),
    ("stem-active-file", _punch(stem="app.log"), "not a segment"),
    ("stem-other-stream", _punch(stem="web.log.20261130-120000.0001"), "not a segment"),
    ("stem-compressed", _punch(stem=STEM + ".gz"), "not a segment"),
    ("stem-state-file", _punch(stem=".logvold/app.log.state.json"), "not a segment"),
    ("stem-nul", _punch(stem=STEM + "\0"), "not a segment"),
    ("stem-seq-0", _punch(stem="app.log.20261130-120000.0000"), "not a segment"),
    ("stem-unpadded", _punch(stem="app.log.20261130-120000.00001"), "not a segment"),
    ("stem-number", _punch(stem=7), "stem must be a string"),
    ("stem-list", _punch(stem=[STEM]), "stem must be a string"),
    ("collapse-zero", {"op": "collapse", "length": 0, "collapsed_before": 0}, "0 bytes"),
    ("rename-inode-str", {"op": "rename", "stem": STEM, "device": 1, "inode": "2"}, "inode"),
    ("trim-outside", {"op": "trim", "stem": "../x", "size": 1}, "not a segment"),
    (
        "copytruncate-negative",
        {"op": "copytruncate", "stem": STEM, "start": 0, "end": 5, "physical_end": -5},
        "physical_end",
    ),
    ("pieces-not-list", {"op": "pieces", "pieces": {"a": 1}}, "pieces must be a list"),
    ("pieces-empty", {"op": "pieces", "pieces": []}, "pieces must be a list"),
    ("pieces-too-many", {"op": "pieces", "pieces": [[STEM, 0, 1]] * 257}, "pieces must be"),
    ("piece-short", {"op": "pieces", "pieces": [[STEM, 0]]}, "[stem, start, end]"),
    ("piece-object", {"op": "pieces", "pieces": [{"stem": STEM}]}, "[stem, start, end]"),
    ("piece-outside", {"op": "pieces", "pieces": [["../x", 0, 4]]}, "not a segment"),
    (
        "piece-forged-after-a-good-one",
        {"op": "pieces", "pieces": [[STEM, 0, 4], ["../x", 4, 8]]},
        "not a segment",
    ),
    (
        "pieces-gap",
        {"op": "pieces", "pieces": [[STEM, 0, 4], [STEM2, 5, 8]]},
        "does not follow",
    ),
    (
        "pieces-same-stem-twice",
        {"op": "pieces", "pieces": [[STEM, 0, 4], [STEM, 4, 8]]},
        "does not follow",
    ),
    ("piece-backwards", {"op": "pieces", "pieces": [[STEM, 9, 4]]}, "ends before"),
]


@pytest.mark.parametrize(("tree", "words"), [f[1:] for f in FORGED], ids=[f[0] for f in FORGED])
def test_a_forged_marker_is_refused_with_its_reason(tree: dict[str, Any], words: str) -> None:
    step = step_from_dict(tree, "app.log")
    assert isinstance(step, RefusedStep), step
    assert words in step.reason, step.reason
    assert len(step.reason) < 1000 and len(step.op) <= 32


@pytest.mark.parametrize(("tree", "words"), [f[1:] for f in FORGED], ids=[f[0] for f in FORGED])
def test_a_state_with_a_forged_marker_loads_and_saves_without_it(
    tmp_path: Path, tree: dict[str, Any], words: str
) -> None:
    """The rest of the state stands (offsets, records); the marker is never written back."""
    path = state_path(tmp_path, "app.log")
    path.parent.mkdir()
    good = {
        "version": 1,
        "device": 1,
        "inode": 2,
        "committed_offset": 10,
        "collapsed_bytes": 0,
        "segments": [],
        "intent": tree,
    }
    path.write_text(json.dumps(good))
    state = load_state(tmp_path, "app.log")
    assert state is not None and isinstance(state.intent, RefusedStep)
    assert state.committed_offset == 10
    save_state(tmp_path, "app.log", state)
    assert json.loads(path.read_bytes())["intent"] is None


@pytest.mark.parametrize(
    "intent",
    [["punch"], "punch", 7, {"stem": STEM}, {"op": 1}, {"op": None}],
    ids=["list", "string", "number", "no-op", "op-number", "op-null"],
)
def test_a_marker_that_is_not_an_object_with_an_op_is_a_corrupt_state(
    tmp_path: Path, intent: object
) -> None:
    """Not a marker at all: the state file is corrupt (the rotator rebuilds it)."""
    path = state_path(tmp_path, "app.log")
    path.parent.mkdir()
    tree = {"version": 1, "device": 1, "inode": 2, "committed_offset": 0, "collapsed_bytes": 0}
    path.write_text(json.dumps({**tree, "intent": intent}))
    with pytest.raises(StateError, match="bad intent"):
        load_state(tmp_path, "app.log")


def test_the_same_marker_is_refused_for_another_stream() -> None:
    """A stem is checked against the stream whose state file holds the marker."""
    assert isinstance(step_from_dict(_punch(), "app.log"), PunchStep)
    assert isinstance(step_from_dict(_punch(), "web.log"), RefusedStep)
