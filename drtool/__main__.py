"""Allow `python -m drtool` (the same program as the `drtool` command)."""

from drtool.cli import main

main()
