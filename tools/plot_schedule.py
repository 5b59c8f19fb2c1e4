#!/usr/bin/env python
"""Command-line tool: see `python tools/plot_schedule.py --help`."""

import sys

from onmt_trainkit.cli import plot_schedule_main

if __name__ == "__main__":
    sys.exit(plot_schedule_main())
