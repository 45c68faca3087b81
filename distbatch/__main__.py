"""`python3 -m distbatch`: the `distbatch` command."""

from .cli import main

main()
