"""Standby providers: power a cold-standby host on, wait for it, power it off."""

from drtool.config import Config, Site
from drtool.errors import UsageError
from drtool.providers.base import StandbyProvider


def get_provider(config: Config, site: Site) -> StandbyProvider:
    if not site.is_standby:
        raise UsageError(f"site {site.name} has no standby_pool; it has fixed serving hosts")
    if site.standby_provider == "lab":
        from drtool.providers.lab import LabProvider

        return LabProvider(config)
    if site.standby_provider == "aws":
        from drtool.providers.aws import AwsProvider

        return AwsProvider(config, site)
    raise UsageError(f"unknown standby provider {site.standby_provider!r} in site {site.name}",
                     hint="providers: lab, aws")
