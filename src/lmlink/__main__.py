"""``python -m lmlink``: the command line."""

from lmlink.cli import main

main()
