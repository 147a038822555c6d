"""Game-day drills: scenarios, measures, capacity check and reports."""
