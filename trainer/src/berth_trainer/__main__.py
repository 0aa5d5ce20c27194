"""`python -m berth_trainer ...` is `berth-trainer ...`."""

import sys

from berth_trainer.cli import main

sys.exit(main())
