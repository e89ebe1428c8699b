#!/usr/bin/env python
"""Train a DDPM pipeline: `python scripts/train_ddpm.py --help`, or under `accelerate launch`.

Every argument may also come from a YAML (or JSON) file of argument names and values, e.g.
`--config configs/main_job/ddpm.yaml`; flags on the command line override it.
"""

import sys

from hf_ddpm_ncsn.training import main

if __name__ == "__main__":
    sys.exit(main("ddpm"))
