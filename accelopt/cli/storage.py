"""``accelopt storage ACTION``: looking after a storage (today: repairing a journal file)."""

from __future__ import annotations

import argparse

from accelopt.cli._command import Command

__all__ = ["Storage"]

REPAIR = (
    "rewrite a journal file keeping every good line (a corrupt one dropped, a record "
    "at its end kept), the original kept as PATH.broken-TIME; stop its workers first"
)


class Storage(Command):
    """``accelopt storage repair PATH``."""

    name = "storage"
    help = "look after a storage: repair a journal file"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        repair = actions.add_parser("repair", help=REPAIR, description=REPAIR)
        repair.add_argument("path", metavar="PATH", help="the journal file")

    def run(self, args: argparse.Namespace) -> int:
        from accelopt.storage import repair_file

        assert args.action == "repair"  # argparse allows no other
        print(repair_file(args.path).describe())
        return 0
