"""The documentation keeps up with the code: every option documented, README commands in CI."""

from __future__ import annotations

import re

import click
import pytest

from onnxq.cli.main import cli

from conftest import ROOT

README = (ROOT / "README.md").read_text()
CLI_DOC = ROOT / "docs" / "cli.md"


def _readme_commands() -> list[str]:
    return re.findall(r"```sh\n(python3 -m venv[^\n]+)\n```", README)


def test_readme_starts_with_the_two_commands_and_ci_runs_them_verbatim():
    commands = _readme_commands()
    assert len(commands) == 2
    assert "onnxq quantize sample_models/" in commands[0]
    assert "pytest" in commands[1]
    head = "\n".join(README.splitlines()[:12])
    assert all(c in head for c in commands)
    ci = (ROOT / ".ci" / "run").read_text()
    assert all(c in ci.splitlines() for c in commands)


COMMANDS = sorted(cli.commands)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_of_every_command_is_documented(name):
    doc = CLI_DOC.read_text()
    assert f"onnxq {name}" in doc
    for param in cli.commands[name].params:
        if isinstance(param, click.Option):
            longest = max(param.opts, key=len)
            assert f"`{longest}" in doc, f"{name} {longest} missing from docs/cli.md"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_has_an_example(name):
    assert "Example" in (cli.commands[name].help or "")
