"""`python -m worker` is the `paylinks` command."""

from worker.cli import main

main()
