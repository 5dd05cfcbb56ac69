"""Controller: desired state, live state from agents, routing snapshots, admin API."""
