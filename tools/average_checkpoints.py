#!/usr/bin/env python
"""Command-line tool: see `python tools/average_checkpoints.py --help`."""

import sys

from onmt_trainkit.cli import average_checkpoints_main

if __name__ == "__main__":
    sys.exit(average_checkpoints_main())
