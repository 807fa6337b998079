"""Go flag-package parsing and usage text, as kube-log-runner's command line sees them."""

from __future__ import annotations

import pytest

from logvold.errors import FlagError, HelpRequested
from logvold.runner import goflags
from logvold.runner.cli import FLAGS
from logvold.runner.goflags import FlagSpec

SPECS = (
    FlagSpec(
        name="log-file", kind="string", default="", usage="If non-empty, save stdout to this file"
    ),
    FlagSpec(name="also-stdout", kind="bool", default="false", zero="false", usage="tee"),
    FlagSpec(name="redirect-stderr", kind="bool", default="true", zero="false", usage="2>&1"),
    FlagSpec(name="n", kind="int", default="0", zero="0", usage="count", check=int),
)


@pytest.mark.parametrize(
    ("argv", "values", "args"),
    [
        (["cmd", "-x"], {}, ["cmd", "-x"]),
        (["-log-file=/tmp/a", "cmd"], {"log-file": "/tmp/a"}, ["cmd"]),
        (["--log-file", "/tmp/a", "cmd"], {"log-file": "/tmp/a"}, ["cmd"]),
        (["-log-file", "-also-stdout", "cmd"], {"log-file": "-also-stdout"}, ["cmd"]),
        (["-log-file=", "cmd"], {"log-file": ""}, ["cmd"]),
        (["-log-file=a=b", "cmd"], {"log-file": "a=b"}, ["cmd"]),
        (["-also-stdout", "cmd"], {"also-stdout": "true"}, ["cmd"]),
        (["--also-stdout=false", "cmd"], {"also-stdout": "false"}, ["cmd"]),
        (["-redirect-stderr=F", "cmd"], {"redirect-stderr": "F"}, ["cmd"]),
        # A bool never takes the next argument: `false` is the command here.
        (["-redirect-stderr", "false", "cmd"], {"redirect-stderr": "true"}, ["false", "cmd"]),
        (["--", "-also-stdout"], {}, ["-also-stdout"]),
        (["-also-stdout", "--", "--", "cmd"], {"also-stdout": "true"}, ["--", "cmd"]),
        (["-", "cmd"], {}, ["-", "cmd"]),
        (["-n", "3", "-n=4", "cmd", "-n=5"], {"n": "4"}, ["cmd", "-n=5"]),
        ([], {}, []),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_parse_like_go(argv: list[str], values: dict[str, str], args: list[str]) -> None:
    parsed = goflags.parse(SPECS, argv)
    defaults = {"log-file": "", "also-stdout": "false", "redirect-stderr": "true", "n": "0"}
    assert parsed.values == defaults | values
    assert parsed.args == args
    assert parsed.set_flags == frozenset(values)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-nope", "cmd"], "flag provided but not defined: -nope"),
        (["--nope=1"], "flag provided but not defined: -nope"),
        (["---log-file", "x"], "bad flag syntax: ---log-file"),
        (["-=x"], "bad flag syntax: -=x"),
        (["-log-file"], "flag needs an argument: -log-file"),
        (["-also-stdout=yes", "cmd"], 'invalid boolean value "yes" for -also-stdout: parse error'),
        (
            ["-n=x", "cmd"],
            "invalid value \"x\" for flag -n: invalid literal for int() with base 10: 'x'",
        ),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_errors_use_go_wording(argv: list[str], message: str) -> None:
    with pytest.raises(FlagError) as info:
        goflags.parse(SPECS, argv)
    assert str(info.value) == message


@pytest.mark.parametrize("flag", ["-h", "--h", "-help", "--help"])
def test_help_when_not_defined(flag: str) -> None:
    with pytest.raises(HelpRequested):
        goflags.parse(SPECS, [flag, "cmd"])


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("t", True),
        ("TRUE", True),
        ("True", True),
        ("0", False),
        ("f", False),
        ("FALSE", False),
        ("False", False),
    ],
)
def test_parse_bool_like_strconv(text: str, value: bool) -> None:
    assert goflags.parse_bool(text) is value


def test_usage_matches_go_print_defaults() -> None:
    # What `kube-log-runner -h` prints for its six flags (Go 1.22 flag.PrintDefaults).
    kube_flags = [
        s
        for s in FLAGS
        if s.name
        in {
            "flush-interval",
            "log-file",
            "log-file-size",
            "log-file-age",
            "also-stdout",
            "redirect-stderr",
        }
    ]
    expected = (
        "Usage of kube-log-runner:\n"
        "  -also-stdout\n"
        "    \tuseful with log-file, log to standard output as well as the log file\n"
        "  -flush-interval duration\n"
        "    \tinterval to flush log file to disk, default value 0, if non-zero, flush log file"
        " every interval\n"
        "  -log-file string\n"
        "    \tIf non-empty, save stdout to this file\n"
        "  -log-file-age duration\n"
        "    \tuseful with log-file-size, in format of timeDuration, if non-zero, remove log"
        " files older than this duration\n"
        "  -log-file-size value\n"
        "    \tuseful with log-file, in format of resource.quantity, default value 0, if"
        " non-zero, rotate log file when it reaches this size\n"
        "  -redirect-stderr\n"
        "    \ttreat stderr same as stdout (default true)\n"
    )
    assert goflags.usage("kube-log-runner", kube_flags) == expected


def test_usage_details() -> None:
    specs = [
        FlagSpec(name="x", kind="bool", default="false", zero="false", usage="short one"),
        FlagSpec(name="mode", kind="string", default='a"b', usage="the `kind` to use\nsecond"),
    ]
    assert goflags.usage("p", specs) == (
        "Usage of p:\n"
        "  -mode kind\n"
        "    \tthe kind to use\n"
        '    \tsecond (default "a\\"b")\n'
        "  -x\tshort one\n"
    )
