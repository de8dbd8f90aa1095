"""`python -m paylinks` is the `paylinks` command."""

from paylinks.worker.cli import main

main()
