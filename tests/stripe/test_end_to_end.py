"""End to end over real HTTP: the app's services -> the Stripe sandbox -> signed webhooks ->
the app's webhook route -> the database. The app's clock follows the sandbox's test clock."""

from __future__ import annotations

import copy
import json
import sqlite3
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from click.testing import CliRunner
from sqlmodel import Session, func, select

from billing_app import clock
from billing_app.cli import main as cli
from billing_app.clock import utcnow
from billing_app.errors import CardDeclined, Conflict, NoBillingAccount, ValidationFailed
from billing_app.gateway import get_gateway
from billing_app.models import Quota, StripeEvent, Subscription, User
from billing_app.plans import get_catalog
from billing_app.services import billing, metering, stripe_sync
from billing_app.services.invoices import list_invoices
from billing_app.services.subscriptions import get_subscription_dto
from billing_app.states import views
from tests.conftest import _clear_caches
from tests.factories import make_user
from tests.stripe.conftest import sign

PRO = {"tokens": 1_000_000, "api_calls": 10_000, "scraping_tasks": 1_000}
FREE = {"tokens": 10_000, "api_calls": 100, "scraping_tasks": 10}
UNLIMITED = {"tokens": 0, "api_calls": 0, "scraping_tasks": 0}
GOOD_CARD = "4242 4242 4242 4242"
DECLINING_CARD = "4000 0000 0000 0341"  # attaches, then every charge fails


def limits(session: Session, user_id: int) -> dict[str, int]:
    session.expire_all()  # read what the server wrote, not this session's copies
    rows = session.exec(select(Quota).where(Quota.user_id == user_id)).all()
    out = {q.metric: q.limit for q in rows}
    session.rollback()
    return out


def pay(http: httpx.Client, checkout_url: str, card: str = GOOD_CARD) -> httpx.Response:
    """What a person does on the checkout page: type a card and press Pay."""
    page = http.get(checkout_url)
    assert page.status_code == 200 and 'id="card-number"' in page.text and 'id="pay"' in page.text
    return http.post(
        checkout_url,
        data={"card_number": card, "card_expiry": "12 / 34", "card_cvc": "123", "card_name": "T"},
        follow_redirects=False,
    )


def flush(http: httpx.Client, sandbox) -> None:
    r = http.post(sandbox.url + "/_sandbox/webhooks/flush", data={"timeout": "20"})
    assert r.json()["idle"] is True


def advance(http: httpx.Client, sandbox, **amount: int) -> list[dict]:
    r = http.post(
        sandbox.url + "/_sandbox/clock/advance", data={k: str(v) for k, v in amount.items()}
    )
    assert r.status_code == 200, r.text
    flush(http, sandbox)
    return r.json()["events"]


def subscribe(session: Session, http: httpx.Client, sandbox, plan: str = "pro"):
    user = make_user(session)
    url = billing.create_checkout_session(session, user.id, plan)
    assert url.startswith(sandbox.url + "/checkout/")
    r = pay(http, url)
    assert r.status_code == 303, r.text
    assert r.headers["location"].startswith("http://app.test/billing?checkout=success")
    flush(http, sandbox)
    return user


def set_card(http: httpx.Client, sandbox, customer_id: str, number: str) -> dict:
    r = http.post(sandbox.url + f"/_sandbox/customers/{customer_id}/card", data={"number": number})
    assert r.status_code == 200, r.text
    flush(http, sandbox)
    return r.json()


def customer_of(session: Session, user_id: int) -> str:
    cus = session.get(User, user_id).stripe_customer_id
    session.rollback()
    assert cus
    return cus


def test_checkout_pay_upgrade_cancel(session, sandbox, http):
    user = subscribe(session, http, sandbox, "pro")
    dto = get_subscription_dto(session, user.id)
    assert (dto.status, dto.plan, dto.effective_plan) == ("active", "pro", "pro")
    assert dto.amount == 9900 and dto.currency == "usd" and dto.current_period_end is not None
    assert limits(session, user.id) == PRO
    page = list_invoices(session, user_id=user.id)
    assert page.total == 1
    inv = page.items[0]
    assert (inv.status, inv.amount_paid, inv.user_email) == ("paid", 9900, user.email)
    assert http.get(inv.hosted_invoice_url).status_code == 200

    with pytest.raises(Conflict):  # a second subscription is never started
        billing.create_checkout_session(session, user.id, "enterprise")

    dto = billing.change_plan(session, user.id, "enterprise")
    assert (dto.plan, dto.status) == ("enterprise", "active")
    assert limits(session, user.id) == UNLIMITED
    flush(http, sandbox)  # the webhooks for the change arrive afterwards: same state
    assert get_subscription_dto(session, user.id).plan == "enterprise"
    assert limits(session, user.id) == UNLIMITED
    assert session.exec(select(func.count()).select_from(Subscription)).one() == 1
    assert len(sandbox.state.subscriptions) == 1
    # The upgrade's prorated difference was invoiced at once.
    assert list_invoices(session, user_id=user.id).total == 2

    portal = billing.create_portal_session(session, user.id)
    assert portal.startswith(sandbox.url + "/portal/")
    assert http.get(portal).status_code == 200

    dto = billing.cancel_subscription(session, user.id, at_period_end=False)
    assert dto.status == "canceled" and dto.effective_plan == "free"
    flush(http, sandbox)
    assert get_subscription_dto(session, user.id).status == "canceled"
    assert limits(session, user.id) == FREE
    # After canceling, a new checkout is allowed again.
    assert billing.create_checkout_session(session, user.id, "basic").startswith(sandbox.url)


def test_cancel_at_period_end_keeps_quotas_until_the_period_ends(session, sandbox, http):
    user = subscribe(session, http, sandbox, "pro")
    dto = billing.cancel_subscription(session, user.id)
    assert dto.cancel_at_period_end is True and dto.effective_plan == "pro"
    flush(http, sandbox)
    assert limits(session, user.id) == PRO
    advance(http, sandbox, days=32)
    dto = get_subscription_dto(session, user.id)
    assert (dto.status, dto.effective_plan) == ("canceled", "free")
    assert limits(session, user.id) == FREE


@pytest.mark.parametrize("plan", ["basic", "enterprise"], ids=["downgrade", "upgrade"])
def test_a_plan_change_undoes_a_cancel_the_portal_scheduled(session, sandbox, http, plan):
    """The customer portal schedules a cancel with `cancel_at` alone (flexible billing
    mode); choosing another plan afterwards keeps the subscription going, as it does after
    a cancel_at_period_end."""
    user = subscribe(session, http, sandbox, "pro")
    sub_id = session.exec(select(Subscription.stripe_subscription_id)).one()
    session.rollback()
    get_gateway().client.v1.subscriptions.update(sub_id, params={"cancel_at": "max_period_end"})
    flush(http, sandbox)
    dto = get_subscription_dto(session, user.id)
    assert dto.cancel_at_period_end is False and dto.ends_at == dto.current_period_end

    dto = billing.change_plan(session, user.id, plan)
    assert (dto.plan, dto.ends_at, dto.cancel_at) == (plan, None, None)
    assert sandbox.state.subscriptions[sub_id]["cancel_at"] is None
    flush(http, sandbox)
    dto = get_subscription_dto(session, user.id)
    assert (dto.plan, dto.status, dto.ends_at) == (plan, "active", None)


def test_declined_card_at_checkout_creates_nothing(session, sandbox, http):
    user = make_user(session)
    url = billing.create_checkout_session(session, user.id, "pro")
    r = pay(http, url, DECLINING_CARD)
    assert r.status_code == 200 and "declined" in r.text.lower()
    flush(http, sandbox)
    assert get_subscription_dto(session, user.id) is None
    assert limits(session, user.id) == FREE


def test_failing_renewal_past_due_grace_then_free_then_recovers(session, sandbox, http):
    user = subscribe(session, http, sandbox, "pro")
    cus = customer_of(session, user.id)
    set_card(http, sandbox, cus, DECLINING_CARD)
    advance(http, sandbox, days=31)  # the renewal charge fails
    dto = get_subscription_dto(session, user.id)
    assert dto.status == "past_due"
    assert dto.effective_plan == "pro"  # within the grace period
    assert dto.grace_ends_at == dto.past_due_since + timedelta(days=7)
    assert limits(session, user.id) == PRO
    assert stripe_sync.enforce_grace_periods(session) == 0
    assert {i.status for i in list_invoices(session, user_id=user.id).items} == {"paid", "open"}

    # Eight days later (the app's clock; Stripe would still be retrying the charge).
    clock.set_clock(lambda: dto.past_due_since + timedelta(days=7, hours=1))
    assert get_subscription_dto(session, user.id).effective_plan == "free"
    assert stripe_sync.enforce_grace_periods_now() == 1  # what the lifespan task runs
    assert stripe_sync.enforce_grace_periods(session) == 0
    assert limits(session, user.id) == FREE
    check = metering.check(session, user.id, "tokens", 20_000)
    assert check.allowed is False and check.limit == 10_000

    # The customer fixes their card: the open invoice is retried and paid.
    state = sandbox.state
    clock.set_clock(lambda: datetime.fromtimestamp(state.now(), UTC))
    retried = set_card(http, sandbox, cus, GOOD_CARD)
    assert [i["status"] for i in retried["retried_invoices"]] == ["paid"]
    dto = get_subscription_dto(session, user.id)
    assert (dto.status, dto.effective_plan, dto.past_due_since) == ("active", "pro", None)
    assert limits(session, user.id) == PRO


def test_renewal_pays_a_new_invoice_and_usage_starts_at_zero(session, sandbox, http, monkeypatch):
    monkeypatch.setenv("BILLING_PLANS_JSON", json.dumps({"pro": {"reset": "billing_period"}}))
    _clear_caches()
    user = subscribe(session, http, sandbox, "pro")
    first = get_subscription_dto(session, user.id)
    metering.record(session, user.id, "tokens", 500)
    status = {s.metric: s for s in metering.summary(session, user.id)}["tokens"]
    assert status.used == 500 and status.period_start == first.current_period_start

    events = advance(http, sandbox, days=31)
    assert {"invoice.paid", "customer.subscription.updated"} <= {e["type"] for e in events}
    renewed = get_subscription_dto(session, user.id)
    assert renewed.status == "active"
    assert renewed.current_period_start == first.current_period_end
    invoices = list_invoices(session, user_id=user.id)
    assert [i.status for i in invoices.items] == ["paid", "paid"]
    assert invoices.items[0].created_at > invoices.items[1].created_at  # newest first
    # Each invoice shows the period it pays for (its lines'), not when it was gathered.
    assert [(i.period_start, i.period_end) for i in invoices.items] == [
        (renewed.current_period_start, renewed.current_period_end),
        (first.current_period_start, first.current_period_end),
    ]
    tokens = {s.metric: s for s in metering.summary(session, user.id)}["tokens"]
    assert tokens.used == 0 and tokens.period_start == renewed.current_period_start
    assert metering.record(session, user.id, "tokens", 10).status.used == 10


def test_sync_repairs_missed_webhooks_and_is_idempotent(session, sandbox, http, receiver):
    sandbox.state.set_webhook_endpoint(None)  # every webhook is lost
    try:
        user = subscribe(session, http, sandbox, "pro")
        assert get_subscription_dto(session, user.id) is None
        assert limits(session, user.id) == FREE

        report = stripe_sync.sync_from_stripe(session, user.id)
        assert (report.subscriptions, report.subscriptions_changed) == (1, 1)
        assert (report.invoices, report.invoices_changed) == (1, 1)
        assert report.errors == ()
        assert get_subscription_dto(session, user.id).status == "active"
        assert limits(session, user.id) == PRO

        again = stripe_sync.sync_from_stripe(session)  # all users: nothing left to repair
        assert (again.users, again.subscriptions_changed, again.invoices_changed) == (1, 0, 0)

        result = CliRunner().invoke(cli, ["stripe", "sync", "--user", user.email])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["subscriptions_changed"] == 0
    finally:
        sandbox.state.set_webhook_endpoint(receiver.url + "/api/billing/webhook")


def test_replay_cli_reapplies_stored_events(session, sandbox, http):
    user = subscribe(session, http, sandbox, "pro")
    # Quotas damaged locally (e.g. a bad manual edit); a replay restores them.
    for q in session.exec(select(Quota).where(Quota.user_id == user.id)).all():
        q.limit = q.plan_limit = 1
        session.add(q)
    session.commit()
    result = CliRunner().invoke(cli, ["stripe", "events", "replay", "--since", "1h"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["replayed"] > 0
    assert limits(session, user.id) == PRO
    bad = CliRunner().invoke(cli, ["stripe", "events", "replay", "--since", "yesterday"])
    assert bad.exit_code == 2 and "neither an ISO time" in bad.output


def test_checkout_and_portal_refuse_bad_requests(session, sandbox):
    user = make_user(session)
    for plan in ("free", "platinum", "", None, 3):
        with pytest.raises(ValidationFailed):
            billing.create_checkout_session(session, user.id, plan)  # type: ignore[arg-type]
    with pytest.raises(NoBillingAccount, match="no billing account yet; choose a plan first"):
        billing.create_portal_session(session, user.id)
    with pytest.raises(NoBillingAccount):
        billing.change_plan(session, user.id, "pro")
    with pytest.raises(ValidationFailed):
        billing.change_plan(session, user.id, "free")
    assert session.get(User, user.id).stripe_customer_id is None  # nothing written
    assert sandbox.state.customers == {}


def test_checkout_reuses_customer_and_is_idempotent_within_a_window(session, sandbox):
    user = make_user(session)
    a = billing.create_checkout_session(session, user.id, "pro")
    b = billing.create_checkout_session(session, user.id, "pro")
    c = billing.create_checkout_session(session, user.id, "basic")
    assert a == b and a != c  # a double click reuses the session; another plan is new
    assert len(sandbox.state.customers) == 1
    cus = next(iter(sandbox.state.customers.values()))
    assert cus["metadata"] == {"user_id": str(user.id)}
    session_obj = next(s for s in sandbox.state.checkout_sessions.values() if s["url"] == a)
    assert session_obj["client_reference_id"] == str(user.id)
    assert session_obj["mode"] == "subscription"


def test_checkout_completed_alone_fetches_the_subscription(session, sandbox, http, receiver):
    """If only checkout.session.completed gets through, the subscription is fetched from
    Stripe instead of waiting for customer.subscription.created."""
    sandbox.state.set_webhook_endpoint(None)
    try:
        user = subscribe(session, http, sandbox, "basic")
    finally:
        sandbox.state.set_webhook_endpoint(receiver.url + "/api/billing/webhook")
    assert get_subscription_dto(session, user.id) is None
    session.rollback()  # end the read: SQLite writers take the lock up front
    resend_checkout_completed(http, sandbox)
    dto = get_subscription_dto(session, user.id)
    assert (dto.status, dto.plan) == ("active", "basic")
    assert limits(session, user.id)["tokens"] == 100_000


def test_a_plan_item_behind_an_add_on_is_synced_and_changed(session, sandbox, http):
    """A subscription whose first item is an add-on (a price outside the plan catalog): the
    plan is read from the plan's item, and a plan change swaps that item only."""
    user = make_user(session)
    customer = billing.ensure_customer(session, session.get(User, user.id))
    session.rollback()
    set_card(http, sandbox, customer, GOOD_CARD)
    client = get_gateway().client
    seats = client.v1.products.create(params={"name": "Extra seats"})
    addon = client.v1.prices.create(
        params={
            "product": seats.id,
            "unit_amount": 500,
            "currency": "usd",
            "recurring": {"interval": "month"},
        }
    )
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer,
            "items": [{"price": addon.id, "quantity": 2}, {"price": "price_sandbox_basic"}],
            "metadata": {"user_id": str(user.id)},
        }
    )
    flush(http, sandbox)
    unprocessed = session.exec(select(StripeEvent).where(StripeEvent.processed_at.is_(None)))
    assert [e.error for e in unprocessed.all()] == []
    dto = get_subscription_dto(session, user.id)
    assert (dto.status, dto.plan, dto.amount) == ("active", "basic", 1900)
    assert limits(session, user.id)["tokens"] == 100_000

    dto = billing.change_plan(session, user.id, "pro")
    assert (dto.plan, dto.amount) == ("pro", 9900)
    flush(http, sandbox)
    items = sandbox.state.subscriptions[sub.id]["items"]["data"]
    assert [(i["price"]["id"], i["quantity"]) for i in items] == [
        (addon.id, 2),
        ("price_sandbox_pro", 1),
    ]
    assert limits(session, user.id) == PRO


def test_an_upgrade_the_card_does_not_pay_changes_nothing(session, sandbox, http):
    user = subscribe(session, http, sandbox, "basic")
    customer = customer_of(session, user.id)
    sub_id = next(iter(sandbox.state.subscriptions))
    invoices_before = list_invoices(session, user_id=user.id).total
    session.rollback()  # end the read: SQLite writers take the lock up front
    set_card(http, sandbox, customer, DECLINING_CARD)

    with pytest.raises(CardDeclined) as info:
        billing.change_plan(session, user.id, "enterprise")
    assert info.value.status_code == 402
    assert "Your plan is unchanged (still Basic)" in info.value.message
    flush(http, sandbox)
    remote = sandbox.state.subscriptions[sub_id]
    assert (remote["status"], remote["items"]["data"][0]["price"]["id"]) == (
        "active",
        "price_sandbox_basic",
    )
    dto = get_subscription_dto(session, user.id)
    assert (dto.status, dto.plan, dto.effective_plan) == ("active", "basic", "basic")
    assert list_invoices(session, user_id=user.id).total == invoices_before
    session.rollback()
    assert limits(session, user.id)["tokens"] == 100_000
    # Not even after the past_due grace period: nothing is past_due.
    clock.set_clock(lambda: datetime.now(UTC) + timedelta(days=30))
    assert stripe_sync.enforce_grace_periods(session) == 0
    assert limits(session, user.id)["tokens"] == 100_000
    clock.set_clock(lambda: datetime.fromtimestamp(sandbox.state.now(), UTC))

    # A new card: the same upgrade is a new request and goes through.
    set_card(http, sandbox, customer, GOOD_CARD)
    dto = billing.change_plan(session, user.id, "enterprise")
    assert (dto.status, dto.plan) == ("active", "enterprise")
    flush(http, sandbox)
    assert limits(session, user.id) == UNLIMITED
    assert list_invoices(session, user_id=user.id).total == invoices_before + 1


def test_a_second_checkout_expires_the_first_so_paying_both_cannot_bill_twice(
    session, sandbox, http
):
    """Pro in one tab, back, Enterprise in another: the Pro page no longer takes a card,
    and the user ends with one subscription, the one paid for."""
    user = make_user(session)
    pro_url = billing.create_checkout_session(session, user.id, "pro")
    enterprise_url = billing.create_checkout_session(session, user.id, "enterprise")
    assert pay(http, enterprise_url).status_code == 303
    flush(http, sandbox)
    page = http.get(pro_url)
    assert 'id="pay"' not in page.text and "expired" in page.text.lower()
    card = {"card_number": GOOD_CARD, "card_expiry": "12 / 34", "card_cvc": "123"}
    old = http.post(pro_url, data={**card, "card_name": "T"}, follow_redirects=False)
    assert old.status_code != 303  # not paid: the page has expired
    flush(http, sandbox)
    subs = session.exec(select(Subscription).where(Subscription.user_id == user.id)).all()
    assert [(s.plan, s.status) for s in subs] == [("enterprise", "active")]
    session.rollback()
    # A double click (the same plan, moments apart) is the same page, still payable.
    other = make_user(session)
    first = billing.create_checkout_session(session, other.id, "basic")
    assert billing.create_checkout_session(session, other.id, "basic") == first
    assert pay(http, first).status_code == 303


def test_a_second_checkout_before_the_first_ones_webhook_is_refused(
    session, sandbox, http, receiver
):
    """Paid, but the webhook is late: Stripe has the subscription, this database not yet.
    A second Checkout would be a second subscription, charged on top of the first."""
    user = make_user(session)
    sandbox.state.set_webhook_endpoint(None)  # the payment's webhooks do not arrive (yet)
    try:
        first = billing.create_checkout_session(session, user.id, "pro")
        assert pay(http, first).status_code == 303
        assert get_subscription_dto(session, user.id) is None
        with pytest.raises(Conflict, match="already have an active subscription"):
            billing.create_checkout_session(session, user.id, "basic")
        dto = get_subscription_dto(session, user.id)  # pulled in from Stripe meanwhile
        assert (dto.status, dto.plan) == ("active", "pro")
        customer = customer_of(session, user.id)
        subs = list(get_gateway().iter_subscriptions(customer_id=customer))
        assert [s["status"] for s in subs] == ["active"]  # one subscription, not two
    finally:
        sandbox.state.set_webhook_endpoint(receiver.url + "/api/billing/webhook")


def test_cancel_now_after_a_scheduled_cancel_is_dated_the_day_it_ended(session, sandbox, http):
    """Stripe keeps cancel_at_period_end and clears cancel_at: only ended_at dates it."""
    user = subscribe(session, http, sandbox, "pro")
    billing.cancel_subscription(session, user.id)  # at the period's end
    flush(http, sandbox)
    billing.cancel_subscription(session, user.id, at_period_end=False)  # then now
    flush(http, sandbox)
    dto = get_subscription_dto(session, user.id)
    assert dto.status == "canceled"
    view = views.subscription_view(dto, get_catalog())
    today = views.fmt.date(utcnow())
    assert view.renews_text == f"Ended {today}", (view.renews_text, dto.current_period_end)


def test_no_transaction_is_held_across_stripe_calls_by_a_sync_or_a_checkout(
    session, sandbox, http, receiver, monkeypatch
):
    """On SQLite an open transaction can hold the write lock: every webhook and usage write
    then waited for Stripe's answer (up to the 30 s timeout)."""
    gateway = get_gateway()
    real = gateway.iter_subscriptions
    held: list[bool] = []

    def spy(**kw):
        held.append(session.in_transaction())
        return real(**kw)

    user = make_user(session)
    sandbox.state.set_webhook_endpoint(None)  # paid, its webhook on its way
    try:
        first = billing.create_checkout_session(session, user.id, "pro")
        assert pay(http, first).status_code == 303
        monkeypatch.setattr(gateway, "iter_subscriptions", spy)
        session.get(User, user.id)  # the caller has read something: a transaction is open
        with pytest.raises(Conflict):  # asks Stripe, then pulls the subscription in
            billing.create_checkout_session(session, user.id, "basic")
        session.get(User, user.id)
        stripe_sync.sync_from_stripe(session, user.id)
    finally:
        sandbox.state.set_webhook_endpoint(receiver.url + "/api/billing/webhook")
    assert held == [False, False, False]


def resend_checkout_completed(http, sandbox) -> None:
    """Deliver the sandbox's checkout.session.completed again, and wait for it."""
    evt = next(
        e for e in sandbox.state.events.values() if e["type"] == "checkout.session.completed"
    )
    assert http.post(sandbox.url + f"/_sandbox/webhooks/resend/{evt['id']}").json()["queued"]
    flush(http, sandbox)


def _writers_blocked(engine) -> bool:
    """Whether some connection holds a transaction open: on SQLite the write lock, which
    every usage write and webhook then waits for; on PostgreSQL one idle in transaction."""
    if engine.dialect.name == "sqlite":
        probe = sqlite3.connect(engine.url.database, timeout=0.1)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            probe.close()
    with engine.connect() as conn:
        return bool(
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state IN ('idle in transaction', 'idle in transaction (aborted)') "
                "AND pid <> pg_backend_pid()"
            ).scalar()
        )


def test_a_webhook_asks_stripe_with_no_transaction_open(
    session, sandbox, http, receiver, engine, monkeypatch
):
    """checkout.session.completed before its subscription's events (a fetch), and two
    states of one second (a fetch): the delivery called Stripe inside the transaction that
    claimed the event, and on SQLite every usage write and webhook waited for the answer."""
    sandbox.state.set_webhook_endpoint(None)
    try:
        user = subscribe(session, http, sandbox, "basic")
    finally:
        sandbox.state.set_webhook_endpoint(receiver.url + "/api/billing/webhook")
    session.rollback()
    gateway = get_gateway()
    real = gateway.retrieve_subscription
    blocked: list[bool] = []

    def spy(subscription_id):
        blocked.append(_writers_blocked(engine))
        return real(subscription_id)

    monkeypatch.setattr(gateway, "retrieve_subscription", spy)
    resend_checkout_completed(http, sandbox)
    dto = get_subscription_dto(session, user.id)
    assert (dto.status, dto.plan) == ("active", "basic")
    assert blocked == [False]

    # An older state of the same second as the stored one: asked again, no lock held.
    sub = copy.deepcopy(sandbox.state.subscriptions[dto.stripe_subscription_id])
    stamp = session.exec(
        select(Subscription.updated_from_stripe_at).where(
            Subscription.stripe_subscription_id == sub["id"]
        )
    ).one()
    session.rollback()
    sub["cancel_at_period_end"] = True
    body = json.dumps(
        {
            "id": "evt_h100_tie",
            "object": "event",
            "type": "customer.subscription.updated",
            "created": int(stamp.timestamp()),
            "data": {"object": sub},
        }
    ).encode()
    r = http.post(
        receiver.url + "/api/billing/webhook",
        content=body,
        headers={"stripe-signature": sign(body), "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert blocked == [False, False]
    assert get_subscription_dto(session, user.id).cancel_at_period_end is False
