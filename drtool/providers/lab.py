"""The `lab` standby provider: power switches of the embedded lab's namespace hosts."""

from pathlib import Path

from drtool.config import Config, Host
from drtool.providers.base import StandbyProvider


class LabProvider(StandbyProvider):
    name = "lab"

    def __init__(self, config: Config):
        from drtool.lab import Lab

        self.lab = Lab(Path(config.lab_state_dir) if config.lab_state_dir else None)

    def power_on(self, host: Host) -> None:
        self.lab.power_on(host.name)

    def power_off(self, host: Host) -> None:
        self.lab.power_off(host.name)

    def state(self, host: Host) -> str:
        return "on" if self.lab.is_powered(host.name) else "off"
