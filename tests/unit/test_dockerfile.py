"""Dockerfile syntax and promises, checked without a Docker daemon (none here,
and `docker build --check` needs one): instructions parsed the way BuildKit
reads them (comments, line continuations, exec-form JSON)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    lines = text.splitlines()
    if lines and lines[0].startswith("# syntax="):
        lines = lines[1:]
    out: list[tuple[str, str]] = []
    pending = ""
    for line in lines:
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comments inside a continued instruction are removed
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, args = full.partition(" ")
        out.append((word.upper(), args.strip()))
    assert not pending, "the last instruction ends with a line continuation"
    return out


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            result.append([])
        assert result, f"{instruction[0]} before the first FROM"
        result[-1].append(instruction)
    return result


INSTRUCTIONS_OF_FILE = parse_dockerfile((ROOT / "Dockerfile").read_text())


def test_every_instruction_is_known_and_written_in_upper_case() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for word, _ in INSTRUCTIONS_OF_FILE:
        assert word in INSTRUCTIONS, word
    starts = [line.split()[0] for line in text.splitlines() if line[:1].isalpha()]
    assert all(s.isupper() for s in starts), starts


BASE_IMAGE = re.compile(r"^python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?$")


def test_base_images_are_pinned_to_one_exact_release() -> None:
    bases = [a.split()[0] for s in stages(INSTRUCTIONS_OF_FILE) for w, a in s if w == "FROM"]
    assert len(bases) == 2 and bases[0] == bases[1], bases  # build and run on the same Python
    assert BASE_IMAGE.match(bases[0]), bases[0]  # an exact patch release and Debian release


def test_final_stage_is_python_slim_non_root_with_exec_form_entrypoint() -> None:
    final = stages(INSTRUCTIONS_OF_FILE)[-1]
    args = {word: a for word, a in final}
    assert json.loads(args["ENTRYPOINT"]) == ["logvold", "serve"]  # exec form: signals reach it
    user = args["USER"].split(":")[0]
    assert user not in ("root", "0")
    assert "useradd" in args["RUN"] and user in args["RUN"]
    # The DaemonSet passes its config and exposes the same port.
    daemonset = yaml.safe_load((ROOT / "manifests" / "daemonset.yaml").read_text())
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--config", "/etc/logvold/config.yaml"]
    assert args["EXPOSE"] == str(container["ports"][0]["containerPort"])


def _labels() -> dict[str, str]:
    final = stages(INSTRUCTIONS_OF_FILE)[-1]
    (label,) = [a for w, a in final if w == "LABEL"]
    return {k: v.strip('"') for k, v in re.findall(r'(\S+?)=("[^"]*"|\S+)', label)}


def test_oci_labels_agree_with_the_package_metadata() -> None:
    labels = _labels()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.version"] == project["version"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.source"] == project["urls"]["Source"]
    assert labels["org.opencontainers.image.title"] == "logvold"
    base = stages(INSTRUCTIONS_OF_FILE)[-1][0][1]
    assert labels["org.opencontainers.image.base.name"].endswith("/" + base)


def test_build_stage_installs_the_package_from_copied_sources() -> None:
    build = stages(INSTRUCTIONS_OF_FILE)[0]
    assert build[0][0] == "FROM"
    copies = [a.split() for w, a in build if w == "COPY"]
    for *sources, _dest in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
    runs = [a for w, a in build if w == "RUN"]
    wheel = next(i for i, a in enumerate(runs) if "pip wheel" in a and a.rstrip().endswith(" ."))
    # The C escaper is optional in the build: without a compiler it would be left out
    # silently, so the stage installs one before building the wheel.
    assert any("apt-get install" in a and " gcc" in a for a in runs[:wheel])
    final = stages(INSTRUCTIONS_OF_FILE)[-1]
    from_build = [a for w, a in final if w == "COPY" and a.startswith("--from=")]
    assert from_build == ["--from=build /wheels /wheels"]
    assert (ROOT / "config.example.yaml").exists()


def test_dockerignore_keeps_the_venv_and_git_out_of_the_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)
    copied = [a.split()[:-1] for w, a in INSTRUCTIONS_OF_FILE if w == "COPY" and "--from" not in a]
    assert not any(src in ignored for srcs in copied for src in srcs)


def test_parser_handles_continuations_and_comments() -> None:
    parsed = parse_dockerfile(
        "# syntax=docker/dockerfile:1\nFROM a\n# note\nRUN x \\\n # inner\n && y\nUSER 1\n"
    )
    assert parsed == [("FROM", "a"), ("RUN", "x && y"), ("USER", "1")]
