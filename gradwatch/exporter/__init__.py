"""Prometheus exporter: a pull-only collector over the daemon's status snapshot, and its HTTP side."""
