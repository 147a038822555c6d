"""DR readiness: will failover to a DR site work, and how long will it take (docs/readiness.md)."""
