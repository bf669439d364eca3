"""The contract every channel keeps, run against each of them (as Alertmanager's shared notifier tests).

Each HTTP channel talks to a real loopback receiver that answers as scripted:

* 2xx delivers; 429, 408 and 5xx are retryable; 3xx and other 4xx are permanent;
* Retry-After is honoured in both of its forms (delta-seconds and HTTP date);
* ``timeout`` bounds the whole request: a receiver that never answers, or that
  trickles its answer one byte at a time, ends in a retryable timeout;
* no secret (URL path, bearer token, header value), not even its start, is in
  any error text, whatever the receiver answers.

The console channel has no receiver; it is held to what applies (it delivers).
"""

from __future__ import annotations

import email.utils
import io
import time
from collections.abc import Callable

import pytest
from receivers import Receiver, Response, make_event, refused_port, wait_until

from gradwatch.config.secrets import Secret, secret_url
from gradwatch.notify.alertmanager import AlertmanagerNotifier
from gradwatch.notify.base import DeliveryError, Notifier
from gradwatch.notify.console import ConsoleNotifier
from gradwatch.notify.slack import SlackNotifier
from gradwatch.notify.webhook import WebhookNotifier

# long, distinct secrets: their starts are recognisable in any text
PATH_TOKEN = "pAtHtOkEn0123456789abcdefghijklmnopqrstuvwxyz"
BEARER = "bEaReR." + "Q" * 40 + ".9876543210zyxwvutsrqponmlkjihgfedcba"
HEADER_VALUE = "hEaDeRsEcReT-" + "h" * 40
SECRETS = (PATH_TOKEN, BEARER, HEADER_VALUE)

Factory = Callable[[str, float], Notifier]


def slack(base: str, timeout: float) -> Notifier:
    n = SlackNotifier("c-slack", secret_url(f"{base}/services/T0/B0/{PATH_TOKEN}"), timeout=timeout)
    n.min_interval = 0.0  # pacing has its own tests; here every request is one send
    return n


def webhook(base: str, timeout: float) -> Notifier:
    return WebhookNotifier(
        "c-webhook",
        secret_url(f"{base}/hook/{PATH_TOKEN}"),
        bearer_token=Secret(BEARER),
        headers={"X-Api-Key": Secret(HEADER_VALUE)},
        hmac_secret=Secret("hmac-" + PATH_TOKEN),
        timeout=timeout,
    )


def alertmanager(base: str, timeout: float) -> Notifier:
    return AlertmanagerNotifier(
        "c-am",
        [secret_url(f"{base}/tenant/{PATH_TOKEN}")],
        bearer_token=Secret(BEARER),
        headers={"X-Scope-OrgID": Secret(HEADER_VALUE)},
        timeout=timeout,
    )


HTTP_CHANNELS = {"slack": slack, "webhook": webhook, "alertmanager": alertmanager}
# the secrets each channel holds (Slack's URL is its only credential)
HELD = {"slack": (PATH_TOKEN,), "webhook": SECRETS, "alertmanager": SECRETS}


@pytest.fixture(params=sorted(HTTP_CHANNELS))
def make(request) -> Factory:
    return HTTP_CHANNELS[request.param]


@pytest.fixture
def held(make) -> tuple[str, ...]:
    return HELD[make.__name__]


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def base_of(receiver: Receiver) -> str:
    return f"http://127.0.0.1:{receiver.port}"


def send_and_catch(n: Notifier) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        n.send([make_event()])
    return info.value


def assert_no_secret(text: str, secrets: tuple[str, ...] = SECRETS) -> None:
    for secret in secrets:
        assert secret[:8] not in text, f"the start of a secret leaked: {text!r}"


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_delivers(make, receiver, status):
    receiver.script(Response(status, "" if status == 204 else "ok"))
    n = make(base_of(receiver), 5)
    n.send([make_event()])
    assert receiver.count() == 1
    n.close()


def test_console_delivers_a_group():
    out = io.StringIO()
    console = ConsoleNotifier(out=out, fmt="line", name="term")
    console.send([make_event(run="c1"), make_event(run="c1", kind="resolved", seq=2)])
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["FIRING", "RESOLVED"]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_429_408_and_5xx_are_retryable(make, receiver, status):
    receiver.script(Response(status, "try later"))
    n = make(base_of(receiver), 5)
    err = send_and_catch(n)
    assert not err.permanent and err.status == status
    assert f"HTTP {status}" in err.message
    n.close()


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 413, 422])
def test_other_4xx_are_permanent(make, receiver, status):
    receiver.script(Response(status, "rejected"))
    n = make(base_of(receiver), 5)
    err = send_and_catch(n)
    assert err.permanent and err.status == status and err.retry_after is None
    n.close()


def test_redirects_are_permanent_and_not_followed(make, receiver):
    receiver.script(Response(302, "", {"Location": base_of(receiver) + "/elsewhere"}))
    n = make(base_of(receiver), 5)
    err = send_and_catch(n)
    assert err.permanent and "redirects are not followed" in err.message
    assert receiver.count() == 1
    n.close()


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_in_seconds(make, receiver, status):
    receiver.script(Response(status, "slow down", {"Retry-After": "7"}))
    n = make(base_of(receiver), 5)
    assert send_and_catch(n).retry_after == 7.0
    n.close()


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_as_an_http_date(make, receiver, status):
    # whole seconds, as the header has: 30 s from the current second is 29..30 s from now
    at = int(time.time()) + 30
    receiver.script(Response(status, "slow down", {"Retry-After": email.utils.formatdate(at, usegmt=True)}))
    n = make(base_of(receiver), 5)
    before = time.time()
    err = send_and_catch(n)
    assert err.retry_after is not None, "the HTTP-date form of Retry-After was ignored"
    assert at - time.time() <= err.retry_after <= at - before
    n.close()


def test_a_receiver_that_never_answers_times_out(make, receiver):
    receiver.script(Response(hang=True))
    n = make(base_of(receiver), 0.5)
    err = send_and_catch(n)
    assert not err.permanent and "timed out after 0.5 s" in err.message
    n.close()


@pytest.mark.parametrize("trickle_from", ["status", "body"])
def test_timeout_bounds_the_whole_request_against_a_trickling_receiver(make, receiver, trickle_from):
    # one byte every 0.25 s resets a per-read timeout of 1 s forever; the answer (~80 bytes)
    # would take 20 s. The request must end after 1 s: a few bytes, never 40 (10 s worth).
    receiver.script(Response(200, "ok" * 20, trickle=0.25, trickle_from=trickle_from))
    n = make(base_of(receiver), 1.0)
    err = send_and_catch(n)
    assert not err.permanent and "timed out after 1 s" in err.message
    [sent] = wait_until(lambda: list(receiver.trickled), what="the receiver to notice the hang-up")
    assert sent < 40 + (80 if trickle_from == "body" else 0)
    n.close()


def test_no_secret_in_the_error_for_a_refused_connection(make):
    with refused_port() as port:
        n = make(f"http://127.0.0.1:{port}", 2)
        err = send_and_catch(n)
    assert not err.permanent and "Connection refused" in err.message
    assert_no_secret(err.message + repr(err))
    n.close()


@pytest.mark.parametrize("status", [401, 500])
def test_no_secret_in_the_error_when_the_receiver_quotes_them(make, held, receiver, status):
    # a receiver that echoes the request: whole secrets, and each cut short by it
    quoted = "bad auth " + " ".join(f"'{s}' (was {s[:20]}...)" for s in held)
    receiver.script(Response(status, quoted + " " + "x" * 300))
    n = make(base_of(receiver), 5)
    err = send_and_catch(n)
    assert f"HTTP {status} bad auth" in err.message
    assert_no_secret(err.message + repr(err), held)
    n.close()


def test_a_long_token_at_the_cut_is_scrubbed_before_cutting(make, held, receiver):
    # the body is cut to 200 characters for the message: a token that straddles the cut
    # must be scrubbed whole first, not matched (and missed) after the cut
    token = max(held, key=len)
    receiver.script(Response(500, "e" * 170 + " token=" + token))
    n = make(base_of(receiver), 5)
    err = send_and_catch(n)
    assert "token=***" in err.message
    assert_no_secret(err.message, held)
    n.close()
