"""`python -m jpeglm.train` / `deepspeed --module jpeglm.train` / `torchrun -m jpeglm.train`."""

import sys

from jpeglm.cli.train import main

sys.exit(main())
