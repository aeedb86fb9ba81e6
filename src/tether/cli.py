"""``tether <command> [CONFIG.yaml] [key=value ...]``: parse, call one public function, exit.

Each subcommand is the module ``tether.commands.<name>`` with ``add_arguments(parser)`` and
``run(args) -> int``, listed in ``COMMANDS``. A ``TetherError`` becomes one line on stderr and
exit code 2 (``--debug`` adds the traceback, the code stays); anything else is a bug and keeps
its traceback. ``--debug`` and ``--quiet`` go before or after the subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from tether import __version__
from tether.errors import TetherError

__all__ = ["COMMANDS", "main"]

# name -> one-line help; each command is the module tether.commands.<name>
_HELP = {
    "train": "DPO (or a variant) against a frozen reference",
    "sft": "supervised fine-tuning on prompt/completion rows",
    "pairs": "import, sample or rewrite preference pairs (JSONL)",
    "iterate": "iterative DPO: sample, judge, train, evaluate, repeat",
    "eval": "win-rate of the trained model against its reference",
    "push": "upload a run's model/ and its model card to the Hugging Face Hub",
    "label": "a local web page where people judge answers side by side",
    "report": "redraw a run's report.md and plots, or overlay several runs",
    "demo": "the whole method end to end on a tiny model, offline, minutes",
    "inspect": "a report on a preference file before training: lengths, bias, duplicates",
}
COMMANDS: dict[str, tuple[str, str]] = {
    name: (f"tether.commands.{name}", text) for name, text in _HELP.items()
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tether",
        description="Align a language model with human preferences (DPO and its family).",
    )
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(
            name, help=help_text, description=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # SUPPRESS: given before the subcommand, the flag is not reset by the subparser
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks of errors")
        p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="only warnings and errors")
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="tether: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except TetherError as e:
        if args.debug:  # the traceback as well, but the same exit code: scripts test it
            traceback.print_exc()
        print(f"tether {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"tether {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
