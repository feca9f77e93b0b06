"""`python -m cellseg ...` (and `torchrun -m cellseg train ...`) run the CLI."""

import sys

from cellseg.cli import main

sys.exit(main())
