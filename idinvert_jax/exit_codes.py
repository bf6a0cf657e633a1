"""The exit-code policy every command line shares (invert.py, edit.py, evaluate.py, train.py, convert, data).

  0  everything asked for was done
  1  nothing could be done: a usage error, a missing or mismatched checkpoint or input, an unwritable output
  2  finished, but some inputs failed: they are listed in failed.txt in the output folder (and in its index.html)
"""
from __future__ import annotations

import argparse
import sys

OK = 0
NOTHING_DONE = 1
SOME_FAILED = 2

HELP = ("Exit codes: 0 everything done; 1 nothing could be done (usage error, missing checkpoint or input, "
        "unwritable output); 2 finished but some inputs failed (listed in failed.txt in the output folder and "
        "in its index.html).")


def for_failures(failed) -> int:
  """OK when nothing failed, SOME_FAILED otherwise."""
  return SOME_FAILED if failed else OK


class ArgumentParser(argparse.ArgumentParser):
  """argparse with the policy: a usage error exits 1 (argparse's own is 2, which here means 'some inputs
  failed'); the policy is the --help epilog. Subcommand parsers inherit both."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("epilog", HELP)
    super().__init__(*args, **kwargs)

  def error(self, message):
    self.print_usage(sys.stderr)
    self.exit(NOTHING_DONE, f"{self.prog}: error: {message}\n")
