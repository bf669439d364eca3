"""Notification channels (Slack, generic webhook, Alertmanager, console) and durable delivery."""

from gradwatch.notify.base import DeliveryError, Notifier
from gradwatch.notify.outbox import Outbox
from gradwatch.notify.registry import build_notifiers

__all__ = ["DeliveryError", "Notifier", "Outbox", "build_notifiers"]
