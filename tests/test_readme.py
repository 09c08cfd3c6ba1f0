"""The README stays true mechanically: every `amr-fast ...` command in its code blocks parses (the
trainers' with --dry-run, which also checks every preset and config field they name), every file, module and
`field=value` it names exists, and nothing a user reads points outside the repository.

The commands are collected by running each bash block in bash with an empty PATH: `amr-fast` (and the
`-m amr_fast.cli` part of an `accelerate launch` line) is a stub that records its arguments, every other command
is a no-op, so the shell expands loops, variables and braces exactly as a user's shell would.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from amr_fast import cli
from amr_fast.config import ClassifyConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TRAINERS = ("train", "classify")

_RECORD = """#!/bin/sh
for a in "$@"; do printf '%s\\037' "$a"; done >> "$RECORD"; printf '\\n' >> "$RECORD"
"""
_ACCELERATE = """#!/bin/sh
for a in "$@"; do case "$a" in --config_file=*) printf '%s\\n' "${a#*=}" >> "$CONFIGS";; esac; done
while [ $# -gt 0 ]; do
  case "$1" in --config_file) printf '%s\\n' "$2" >> "$CONFIGS";; -m) shift; shift; exec amr-fast "$@";; esac; shift
done
"""


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def recorded_commands(tmp_path: Path) -> tuple[list[list[str]], list[str]]:
    """(argv of every amr-fast call the README's bash blocks make, the Accelerate config files they name)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("amr-fast", _RECORD), ("accelerate", _ACCELERATE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    record, configs = tmp_path / "record", tmp_path / "configs"
    env = {"PATH": str(bin_dir), "RECORD": str(record), "CONFIGS": str(configs), "HOME": str(tmp_path)}
    for block in bash_blocks(README):
        script = "command_not_found_handle() { return 0; }\n" + block
        proc = subprocess.run(["/bin/bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, f"README bash block failed in bash:\n{block}\n{proc.stderr}"
    calls = [line.split("\x1f")[:-1] for line in record.read_text().splitlines()] if record.exists() else []
    return calls, (configs.read_text().split() if configs.exists() else [])


def from_synopsis(argv: list[str]) -> list[str]:
    """A usage line (`eval RUN [--metrics a,b] [--mode x|y] [c.png ...]`) as a command: brackets dropped, the
    first of alternatives, no `...`."""
    out = [a.strip("[]").split("|")[0] for a in argv if a.strip("[]") not in ("...", "")]
    return [a for a in out if a != "..."]


def test_every_amr_fast_command_in_the_readme_parses(tmp_path, capsys, monkeypatch):
    calls, configs = recorded_commands(tmp_path)
    assert len(calls) >= 30  # the collection works: the README has dozens of commands
    monkeypatch.setenv("AMR_FAST_CACHE", str(tmp_path / "cache"))
    seen = set()
    for argv in calls:
        if tuple(argv) in seen:
            continue
        seen.add(tuple(argv))
        argv = from_synopsis(argv)
        line = "amr-fast " + shlex.join(argv)
        assert argv and argv[0] in cli.COMMANDS, f"README: unknown command in `{line}`"
        try:
            module, args = cli.parse_command(argv[0], argv[1:])
        except SystemExit as stop:
            raise AssertionError(f"README: `{line}` does not parse:\n{capsys.readouterr().err}") from stop
        if argv[0] in TRAINERS and not args.list_presets:
            args.dry_run = True  # resolves the preset and every field=value override, trains nothing
            assert module.main(args) == 0, line
    capsys.readouterr()
    for path in configs:
        assert (ROOT / path).is_file(), f"README names the Accelerate config {path}, which does not exist"


def test_every_file_module_and_field_the_readme_names_exists():
    missing = []
    for path in set(re.findall(r"`((?:amr_fast|kernels|launch|docs|scripts|tests|\.ci)/[\w./-]*)", README)):
        if not any(c in path for c in "<*{") and not (ROOT / path.rstrip("/")).exists():
            missing.append(path)
    missing += [p for p in re.findall(r"\]\(((?:docs|launch)/[^)]+)\)", README) if not (ROOT / p).exists()]
    for dotted in set(re.findall(r"`(amr_fast(?:\.\w+)+)", README)):
        if not _importable(dotted):
            missing.append(dotted)
    fields = set(TrainConfig.__dataclass_fields__) | set(ClassifyConfig.__dataclass_fields__)
    for name in set(re.findall(r"`([a-z][a-z0-9_]*)=[^`\s]*`", README)) - {"field", "procs"}:  # procs=N: a launch
        if name not in fields:
            missing.append(f"field {name}")
    assert not missing, f"the README names what does not exist: {sorted(missing)}"


def _importable(dotted: str) -> bool:
    """`amr_fast.a.b.Name.attr`: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


OUTSIDE = re.compile(r"\.\./shared|shared/public-amr|/work/|/tmp/public-amr|/home/|/root/")


def test_nothing_a_user_reads_points_outside_the_repository():
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
    for folder, pattern in (("docs", "*.md"), ("amr_fast", "*"), ("kernels", "*"), ("launch", "*"), ("scripts", "*")):
        files += [p for p in (ROOT / folder).rglob(pattern) if p.is_file() and p.suffix not in (".png", ".pyc")]
    hits = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
        for path in files
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not hits, "paths outside the repository:\n" + "\n".join(hits)


@pytest.mark.parametrize("needle", ["/work/runs/x", "../shared/public-amr/setup.sh"])
def test_the_outside_check_can_fail(needle):
    assert OUTSIDE.search(needle)
