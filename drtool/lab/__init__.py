"""The embedded lab: two sites of network-namespace hosts with DNS, registries and S3 on this machine."""

from drtool.lab.manager import Lab
from drtool.lab.status import PartStatus
from drtool.lab.topology import HOSTS

__all__ = ["HOSTS", "Lab", "PartStatus"]
