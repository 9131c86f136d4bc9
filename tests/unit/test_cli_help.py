"""`schoolgate COMMAND --help` says what a person needs to run it (issue 10):
what the command does, its signals, the environment variables the gateway
reads, and every exit code it can return."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway import exitcodes
from gateway.cli import main

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


def help_of(capsys, *command: str) -> str:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def exit_code_lines(text: str) -> dict[int, str]:
    """The "exit codes:" section as {code: text}; "3, 4" lines give both."""
    section = text.split("\nexit codes:\n", 1)[1].split("\n\n", 1)[0]
    codes: dict[int, str] = {}
    for line in section.splitlines():
        m = re.match(r"  (\d+(?:, \d+)*) +(\S.*)", line)
        if m:
            for code in m[1].split(", "):
                codes[int(code)] = m[2]
    return codes


def environment_variables() -> set[str]:
    """Every variable the gateway's own code reads from the environment."""
    names: set[str] = set()
    pattern = re.compile(r"""(?:environ\.get|environ\[|getenv)\(?\s*["']([A-Z0-9_]+)["']""")
    for path in GATEWAY.rglob("*.py"):
        names.update(pattern.findall(path.read_text()))
    return names


def test_run_help_documents_signals_environment_and_exit_codes(capsys):
    text = help_of(capsys, "run")
    assert "Run the gateway in the foreground" in text
    for signal, does in [("SIGHUP", "reload FILE"), ("SIGTERM, SIGINT", "drain"),
                         ("SIGUSR1", "reopen the access log file")]:
        assert re.search(rf"^  {signal} +{does}", text, re.MULTILINE), signal
    assert exit_code_lines(text).keys() == {
        exitcodes.OK, exitcodes.CONFIG, exitcodes.USAGE, exitcodes.LISTEN,
        exitcodes.WORKERS, exitcodes.INTERRUPTED}
    assert exit_code_lines(text)[exitcodes.LISTEN].startswith("cannot listen: the address "
                                                               "is already served")


def test_run_help_names_every_environment_variable_the_gateway_reads(capsys):
    text = help_of(capsys, "run")
    env = text.split("\nenvironment:\n", 1)[1].split("\n\n", 1)[0]
    found = environment_variables()
    assert "SCHOOLGATE_LOG" in found  # the search sees the supervisor's read
    for name in found:
        assert re.search(rf"^  {name} ", env, re.MULTILINE), name
    assert "DEBUG, INFO (default), WARNING or ERROR" in env


def test_check_help_documents_offline_strict_and_exit_codes(capsys):
    text = help_of(capsys, "check")
    assert "like `nginx -t`" in text
    assert "--offline" in text and "[redis] url" in text
    assert "--strict" in text
    assert exit_code_lines(text).keys() == {
        exitcodes.OK, exitcodes.CONFIG, exitcodes.USAGE, exitcodes.WARNINGS}


def test_demo_help_documents_exit_codes(capsys):
    text = help_of(capsys, "demo")
    assert "demo school servers" in text
    assert "SCHOOLGATE_LOG" in text
    assert {0, 1, 2, exitcodes.LISTEN, exitcodes.WORKERS} <= exit_code_lines(text).keys()


def test_exit_codes_are_distinct():
    codes = [v for k, v in vars(exitcodes).items() if k.isupper()]
    assert len(codes) == len(set(codes))


def test_top_level_help_points_at_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("run", "check", "demo"):
        assert re.search(rf"^    {command} ", text, re.MULTILINE)
    assert "schoolgate COMMAND --help" in text


@pytest.mark.parametrize("argv", [["run"], ["check"], ["check", "a.toml", "--config", "b.toml"]])
def test_config_file_given_once_or_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == exitcodes.USAGE
    assert "(FILE or --config FILE)" in capsys.readouterr().err
