"""The package imports fast and silently; every subcommand answers --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cellseg.cli import COMMANDS, main


def test_import_is_silent_and_light() -> None:
    code = ("import sys, cellseg, cellseg.core.rle, cellseg.core.instances, cellseg.data.record, cellseg.cli;"
            "heavy = [m for m in ('torch', 'cv2', 'kaggle', 'pandas', 'matplotlib', 'albumentations')"
            " if m in sys.modules]; print(heavy)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]", res.stdout
    assert res.stderr == ""


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_subcommand_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: cellseg" in capsys.readouterr().out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out
