"""High availability inside a site: the escalation ladder's decision core (restart, drain, failover)."""

from drtool.ha.ladder import (
    Action,
    InstanceHealth,
    InstanceState,
    LadderJournal,
    LadderSettings,
    LadderState,
    Policy,
    apply,
    decide,
)

__all__ = ["Action", "InstanceHealth", "InstanceState", "LadderJournal", "LadderSettings", "LadderState", "Policy",
           "apply", "decide"]
