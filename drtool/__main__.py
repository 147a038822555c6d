"""Allow `python -m drtool` (the same program as the `drtool` command)."""

from drtool.launch import main

main()
