"""Typed channel configs (``gradwatch.config.channels``) -> Notifier objects.

The daemon calls :func:`build_notifiers` at start and on every reload (build
the new channels, close the old), so a config never holds a live channel.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradwatch.config.channels import ChannelConfig, read_channels
from gradwatch.config.model import Config
from gradwatch.config.yaml import Section
from gradwatch.notify.alertmanager import AlertmanagerNotifier
from gradwatch.notify.base import Notifier
from gradwatch.notify.console import ConsoleNotifier
from gradwatch.notify.slack import SlackNotifier
from gradwatch.notify.webhook import WebhookNotifier

CLASSES: dict[str, type[Notifier]] = {
    "slack": SlackNotifier,
    "webhook": WebhookNotifier,
    "alertmanager": AlertmanagerNotifier,
    "console": ConsoleNotifier,
}


def build_notifier(channel: ChannelConfig) -> Notifier:
    """One channel from its checked config."""
    return CLASSES[channel.type](**channel.common(), **channel.options())


def build_notifiers(config: Config | Sequence[ChannelConfig]) -> list[Notifier]:
    """New channel objects for ``config.notifiers`` (or a list of channel configs)."""
    channels = config.notifiers if isinstance(config, Config) else config
    return [build_notifier(c) for c in channels]


def build_from_sections(sections: list[Section]) -> list[Notifier]:
    """Read ``notifiers:`` items and build them; problems go to the sections' problem list."""
    return build_notifiers(read_channels(sections))
