"""`python -m dataflows.cli ...`: the same as `cuts ...`."""
from dataflows.cli.main import run

run()
