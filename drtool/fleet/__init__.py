"""Fleet planning for a region outage (issue #16): which standby host takes which service, in what order."""

from drtool.fleet.planner import Assignment, Left, Plan, Service, StandbyHost, plan, validate

__all__ = ["Assignment", "Left", "Plan", "Service", "StandbyHost", "plan", "validate"]
