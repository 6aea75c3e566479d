"""Budgets and alerts: rules over the query layer's measures, their state per group, and the
webhook deliveries that announce each change (see README, "Alerts")."""
