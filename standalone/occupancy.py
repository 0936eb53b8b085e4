#!/usr/bin/env python
"""Fit a binary occupancy field to a mesh (the paper's §5.2) and report IoU per epoch.

python standalone/occupancy.py                                 # embedded mesh, Gaussian, ESGD
python standalone/occupancy.py --mesh armadillo.off --compare adam,esgd --epochs 20
python standalone/occupancy.py --config configs/occupancy/gaussian-esgd.yaml
"""

import sys

from nf_precond_plugin.tasks.cli_support import run_cli, standalone_main
from nf_precond_plugin.tasks.occupancy import OccupancyConfig, OccupancyTask


def main(argv: list[str]) -> None:
    standalone_main(OccupancyConfig, OccupancyTask, "standalone/occupancy.py", argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
