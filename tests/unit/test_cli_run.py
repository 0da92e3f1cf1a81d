"""`riverdelta run` passes on every option it accepts, and refuses what it cannot honour."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def _args(*argv: str):
    from riverdelta.cli import build_parser

    return build_parser().parse_args(["run", *argv])


def test_a_bounded_replay_reaches_the_driver_with_its_bounds():
    from riverdelta.cli import run_command

    cmd = run_command(
        _args("transactions", "--mode", "replay", "--until", '{"0": 5}', "--skip-present")
    )
    app = cmd[cmd.index("--stream") :]
    assert app[app.index("--until") + 1] == '{"0": 5}' and "--skip-present" in app


def test_bounds_on_a_live_run_are_refused_not_dropped(capsys):
    from riverdelta.cli import main

    assert main(["run", "transactions", "--until", '{"0": 5}']) == 2
    assert "--until and --skip-present bound a replay: add --mode replay" in capsys.readouterr().err
