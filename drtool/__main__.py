"""Allow `python -m drtool`."""

from drtool.cli import main

main()
