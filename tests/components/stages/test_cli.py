"""``simclr``'s help: plain text, each stage saying what it does, each command only its own flags."""

from __future__ import annotations

import re

import pytest

from components.stage_api import STAGES
from components.stages.cli import build_parser, extra_commands, main


def help_of(*command: str) -> str:
    parser, _ = build_parser(extra_commands())
    if not command:
        return parser.format_help()
    subparsers = next(action for action in parser._actions if action.dest == "command")
    return subparsers.choices[command[0]].format_help()


def test_top_level_help_is_plain_and_says_what_each_stage_does():
    text = help_of()
    assert "``" not in text and "`" not in text
    assert not re.search(r"run the \S+ stage", text)
    for stage in STAGES:
        assert stage.name in text and stage.help.split()[0] in text


@pytest.mark.parametrize("command", ["models", "promote", "rollback", "sweep-runs"])
def test_registry_commands_take_the_params_file_only(command):
    text = help_of(command)
    assert "--params" in text and "--set" not in text and "--preset" not in text


@pytest.mark.parametrize("command", ["verify-remote", "pull"])
def test_dvc_remote_commands_take_no_config_flags(command):
    text = help_of(command)
    assert "--params" not in text and "--set" not in text and "--preset" not in text


def test_stages_keep_their_config_flags():
    text = help_of("pretrain")
    assert all(flag in text for flag in ("--params", "--preset", "--set"))


def test_models_rejects_set(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "--set", "registry.model_name=x"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --set" in capsys.readouterr().err
