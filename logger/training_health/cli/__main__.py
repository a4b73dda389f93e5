"""`python -m training_health.cli`: the `training-health` command."""

import sys

from training_health.cli import main

sys.exit(main())
