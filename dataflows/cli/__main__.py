"""`python -m dataflows.cli ...`: the same as `cuts ...`."""
import sys

from dataflows.cli.main import main

sys.exit(main())
