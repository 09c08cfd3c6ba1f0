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


def test_a_user_error_ends_the_process_group_before_the_interpreter_exits(tmp_path):
    """A process of a multi-process run that stops on a user error ends its process group in `cli.main` (gloo's
    threads still joinable at interpreter exit aborted about one such exit in ten: SIGABRT after the error)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        (tmp_path / "file").write_text("")
        assert cli.main(["train", "--preset", "demo", "--outdir", str(tmp_path / "file"), "procs=1"]) == 2
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
