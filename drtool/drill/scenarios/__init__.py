"""The drill's scenarios, one module each. This registry is the one list of them: the drill, `drtool drill --help`
and docs/drills.md take their names from it. Adding a scenario: one module, one line here (docs/drills.md)."""

from drtool.drill.scenarios import (
    corrupt_latest_snapshot,
    gpu_degraded,
    primary_down,
    process_crash,
    region_down,
    region_partition,
    registry_mismatch,
    standby_boot_failure,
)
from drtool.drill.scenarios.base import Scenario

REGISTRY: dict[str, Scenario] = {s.name: s for s in (
    primary_down.SCENARIO,
    region_partition.SCENARIO,
    corrupt_latest_snapshot.SCENARIO,
    standby_boot_failure.SCENARIO,
    registry_mismatch.SCENARIO,
    gpu_degraded.SCENARIO,
    process_crash.SCENARIO,
    region_down.SCENARIO,
)}
DEFAULT = "primary-down"
