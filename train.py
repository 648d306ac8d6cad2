"""Train one method on one scenario: ``python train.py --scenario routing --method ppo --seed 0``.

A thin command line over ``agents.run`` (the library: ``train``, ``load_policy``, the run directory);
``python train.py --help`` lists the options. Installed as the ``aajr-train`` command as well.
"""

import sys

from agents.cli import main

if __name__ == "__main__":
    sys.exit(main())
