"""drtool: disaster recovery for teams that serve ML models on GPU hosts."""

__version__ = "0.1.0"
