import subprocess
import sys

from amr_fast import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_an_error_without_traceback():
    r = subprocess.run([sys.executable, "-m", "amr_fast.cli", "nope"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "unknown command" in r.stderr and "Traceback" not in r.stderr
