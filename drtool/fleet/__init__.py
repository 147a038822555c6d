"""Fleet planning for a region outage: which standby host takes which service, in what order.

`drtool.fleet.planner` is the pure planner; `drtool.fleet.plan` picks a recovery's services from the configuration.
The recovery engine (drtool/recovery/) places its moves with both; its dry run is the plan a person reads."""
