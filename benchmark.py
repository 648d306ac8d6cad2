"""Robustness benchmark: ``python benchmark.py --preset smoke`` (``--help`` lists the options).

A thin command line over ``robustness`` (the grid runner, attacks, diagnostics and report); installed
as the ``aajr-benchmark`` command as well.
"""

import sys

from robustness.cli import main

if __name__ == "__main__":
    sys.exit(main())
