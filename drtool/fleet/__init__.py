"""Fleet planning for a region outage: which standby host takes which service, in what order.

`drtool.fleet.planner` is the pure planner; `drtool.fleet.plan` builds its input from the configuration and reads
what each move would use (read-only)."""
