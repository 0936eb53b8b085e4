#!/usr/bin/env python
"""Fit a coordinate MLP to an image (the paper's §5.1) and report PSNR per epoch.

python standalone/image.py                                  # embedded astronaut, Gaussian, ESGD
python standalone/image.py --image lion.png --compare adam,esgd --epochs 10
python standalone/image.py --config configs/image/gaussian-esgd.yaml
"""

import sys

from nf_precond_plugin.tasks.cli_support import run_cli, standalone_main
from nf_precond_plugin.tasks.image import ImageConfig, ImageTask


def main(argv: list[str]) -> None:
    standalone_main(ImageConfig, ImageTask, "standalone/image.py", argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
