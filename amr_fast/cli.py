"""The `amr-fast` command line: one subcommand per module, imported only when it is used.

Each subcommand module defines `configure_parser(parser)` (adds its flags, every one with help text) and
`main(args) -> int`. The CLI only parses and dispatches; library code raises `ValueError` /
`FileNotFoundError` with the fix in the message, and this file prints it without a traceback
(set AMR_FAST_DEBUG=1 to see the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

from amr_fast.bench import BENCHES

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("amr_fast.train", "train an AMR autoencoder (or a baseline) on shards; re-run to resume"),
    "shard": ("amr_fast.data.shard", "convert a dataset's published files into WebDataset shards"),
    "eval": ("amr_fast.eval.cli", "probe / disentanglement / reconstruction metrics of a run or snapshot"),
    "mix": ("amr_fast.eval.mix", "decode mixes of your own image files with a trained snapshot"),
    "explore": ("amr_fast.eval.explore", "live mix explorer in the browser (local web app) for a snapshot"),
    "report": ("amr_fast.eval.report", "results table (markdown) and learning curves from run directories"),
    "classify": ("amr_fast.classify", "train a Manifold Mixup / mixup / ERM / cutout classifier; re-run to resume"),
    "bench": ("amr_fast.bench", "benchmarks: " + ", ".join(BENCHES)),
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is None or the help text already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<9} {desc}" for name, (_, desc) in COMMANDS.items()]
    return argparse.ArgumentParser(
        prog="amr-fast",
        description="Adversarial Mixup Resynthesis and Manifold Mixup, fast.",
        epilog="commands:\n" + "\n".join(lines) + "\n\n`amr-fast COMMAND --help` explains each flag.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="amr-fast COMMAND [options]",
    )


def parse_command(name: str, rest: list[str]) -> tuple[ModuleType, argparse.Namespace]:
    """(the subcommand's module, its parsed arguments); a bad command line exits as argparse does."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(
        prog=f"amr-fast {name}",
        description=(module.__doc__ or COMMANDS[name][1]).strip().split("\n\n")[0],
        formatter_class=_HelpFormatter,
    )
    module.configure_parser(parser)
    # field=value overrides may follow options (`--outdir O lr=1e-3`); a parser of subcommands (bench) cannot intermix
    intermixed = not any(action.nargs == argparse.PARSER for action in parser._actions)
    return module, parser.parse_intermixed_args(rest) if intermixed else parser.parse_args(rest)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        top = _top_parser()
        if argv and argv[0] not in ("-h", "--help"):
            top.print_usage(sys.stderr)
            print(
                f"amr-fast: error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}",
                file=sys.stderr,
            )
            return 2
        top.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module, args = parse_command(name, rest)
    try:
        return int(module.main(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("AMR_FAST_DEBUG"):
            raise
        message = f"amr-fast {name}: error: {err}"
        errors = os.environ.get("AMR_FAST_ERRORS")  # one of the processes `run.start_processes` started
        if errors:  # the launcher prints each different message once
            Path(errors, os.environ.get("RANK", "0")).write_text(message)
        else:
            print(message, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"amr-fast {name}: interrupted", file=sys.stderr)
        return 130
    finally:
        end_process_group()


def end_process_group() -> None:
    """A process of a multi-process run that ends by an error: its process group (gloo's threads) ends here, not at
    interpreter exit, where a native thread still joinable aborts the process (`terminate called without an active
    exception`, SIGABRT) after the error was said. A run that ends well has ended it already (`Run.__exit__`)."""
    dist = sys.modules.get("torch.distributed")  # not imported: no process group (and --help stays fast)
    if dist is not None and dist.is_available() and dist.is_initialized():
        from amr_fast import comm

        comm.close()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
