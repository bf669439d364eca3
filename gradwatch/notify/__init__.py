"""Notification channels (Slack, generic webhook, Alertmanager, console) and durable delivery."""

from gradwatch.notify.base import DeliveryError, Notifier, build_notifiers
from gradwatch.notify.outbox import Outbox

__all__ = ["DeliveryError", "Notifier", "Outbox", "build_notifiers"]
