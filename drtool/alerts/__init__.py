"""Alert intake: Alertmanager webhooks and health probes turned into failover decisions."""
