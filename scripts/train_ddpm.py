#!/usr/bin/env python
"""Train a DDPM pipeline: `python scripts/train_ddpm.py --help`, or under `accelerate launch`.

Every argument may also come from a JSON or YAML file: `--config args.json` (the command line wins).
"""

import sys

from hf_ddpm_ncsn.training import main

if __name__ == "__main__":
    sys.exit(main("ddpm"))
