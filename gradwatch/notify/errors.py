"""How a channel says a group was not (fully) delivered."""

from __future__ import annotations


class DeliveryError(Exception):
    """A send that did not deliver.

    ``retry_after``: the receiver said when to come back (HTTP 429/503
    Retry-After), in seconds. ``permanent``: trying the same request again
    cannot succeed (bad URL, revoked webhook, payload rejected).
    ``delivered``: how many of the group's first events the receiver did
    take before the failure (a group sent as several requests); the outbox
    marks those sent and retries only the rest.
    The message never holds a secret.
    """

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        permanent: bool = False,
        status: int | None = None,
        delivered: int = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.permanent = permanent
        self.status = status  # the HTTP status, when the receiver answered
        self.delivered = delivered
