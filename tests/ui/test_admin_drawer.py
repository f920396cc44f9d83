"""The admin drawer: what `load_detail` hands AdminState for a user with a renewing,
cancelling, past_due or canceled subscription, and for one with none, read from a real
database through the admin service's user detail; and what the drawer shows while another
user's detail is on its way."""

from __future__ import annotations

import asyncio
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import Session

from billing_app.models import Invoice, Subscription
from billing_app.services import quotas
from billing_app.states import admin as admin_state
from billing_app.states import views
from billing_app.states.admin import AdminState
from tests.conftest import FrozenClock, _clear_caches
from tests.factories import make_user
from tests.ui.test_states import cookie_for, limit_of, state_for

START, END = datetime(2026, 11, 10, 8, tzinfo=UTC), datetime(2026, 12, 10, 8, tzinfo=UTC)
HOSTED = "http://127.0.0.1:12111/invoices/in_1/hosted"


def _customer(session: Session, email: str) -> int:
    return make_user(session, email=email, customer="cus_drawer1").id


def _subscribe(session: Session, uid: int, **fields: Any) -> None:
    base: dict[str, Any] = dict(
        user_id=uid,
        stripe_subscription_id="sub_drawer1",
        stripe_customer_id="cus_drawer1",
        plan="pro",
        status="active",
        current_period_start=START,
        current_period_end=END,
    )
    session.add(Subscription(**{**base, **fields}))
    session.commit()


def _invoice(session: Session, uid: int) -> None:
    session.add(
        Invoice(
            stripe_invoice_id="in_drawer1",
            user_id=uid,
            stripe_subscription_id="sub_drawer1",
            number="DRAWER-0001",
            status="paid",
            amount_due=9900,
            amount_paid=9900,
            period_start=START,
            period_end=END,
            hosted_invoice_url=HOSTED,
            invoice_pdf=HOSTED + "/pdf",
            created_at=START,
        )
    )
    session.commit()


def test_a_renewing_subscriber_shows_plan_price_period_ids_and_invoices(
    session: Session, frozen_clock: FrozenClock
) -> None:
    uid = _customer(session, "payer@example.com")
    _subscribe(session, uid)
    _invoice(session, uid)

    data = admin_state.load_detail(uid)
    sub: views.AdminSubscriptionView = data["subscription"]
    assert sub.has_subscription
    assert sub.headline == "Pro · $99.00 / month"
    # The users list's and the dashboard's wording and colour.
    assert (sub.status_label, sub.status_color) == ("Active", "grass")
    assert sub.ends_text == "Renews on Dec 10, 2026"
    assert sub.period_text == "Current period: Nov 10, 2026 – Dec 10, 2026"
    assert sub.grace_text == ""
    assert (sub.customer_id, sub.subscription_id) == ("cus_drawer1", "sub_drawer1")
    # The sandbox has no dashboard: ids are text only.
    assert (sub.customer_url, sub.subscription_url) == ("", "")

    (inv,) = data["invoices"]
    assert (inv.number, inv.date, inv.amount) == ("DRAWER-0001", "Nov 10, 2026", "$99.00")
    assert (inv.status_label, inv.status_color) == ("Paid", "grass")
    assert (inv.hosted_url, inv.pdf_url) == (HOSTED, HOSTED + "/pdf")


def test_a_cancel_scheduled_with_cancel_at_alone_says_cancels_on(
    session: Session, frozen_clock: FrozenClock
) -> None:
    uid = _customer(session, "leaving@example.com")
    # The customer portal's cancel: cancel_at set, the flag left false.
    cancel_at = datetime(2026, 11, 30, 8, tzinfo=UTC)
    _subscribe(session, uid, cancel_at=cancel_at, cancel_at_period_end=False)

    sub = admin_state.load_detail(uid)["subscription"]
    assert sub.ends_text == "Cancels on Nov 30, 2026"
    assert (sub.status_label, sub.headline) == ("Active", "Pro · $99.00 / month")


def test_past_due_shows_the_grace_end_and_when_it_has_passed(
    session: Session, frozen_clock: FrozenClock
) -> None:
    uid = _customer(session, "late@example.com")
    since = frozen_clock.now - timedelta(days=2)
    _subscribe(session, uid, status="past_due", past_due_since=since)

    sub = admin_state.load_detail(uid)["subscription"]
    assert (sub.status_label, sub.status_color) == ("Past due", "amber")
    assert sub.grace_text == "Grace period ends on Nov 20, 2026, then Free quotas"

    frozen_clock.set(frozen_clock.now + timedelta(days=10))
    sub = admin_state.load_detail(uid)["subscription"]
    assert sub.grace_text == "Grace period ended on Nov 20, 2026: on Free quotas"


def test_a_canceled_subscription_reads_as_free_and_ended(
    session: Session, frozen_clock: FrozenClock
) -> None:
    uid = _customer(session, "gone@example.com")
    _subscribe(session, uid, status="canceled", canceled_at=START + timedelta(days=3))

    sub = admin_state.load_detail(uid)["subscription"]
    assert sub.headline == "Free plan · Pro subscription canceled"
    assert (sub.status_label, sub.status_color) == ("Canceled", "gray")
    # Canceled at once (no cancel_at, no cancel_at_period_end): it ended that day, not at
    # the end of the period the customer no longer has.
    assert sub.ends_text == "Ended Nov 13, 2026"
    assert sub.period_text.startswith("Last period: ")


def test_no_subscription_is_the_free_plan(session: Session) -> None:
    uid = make_user(session, email="browser@example.com").id

    data = admin_state.load_detail(uid)
    sub = data["subscription"]
    assert not sub.has_subscription
    assert sub.headline == "Free plan · no subscription"
    assert (sub.ends_text, sub.customer_id, sub.subscription_id) == ("", "", "")
    assert data["invoices"] == []


@pytest.mark.parametrize(
    ("key", "base"),
    [("sk_test_abc", "https://dashboard.stripe.com/test"),
     ("rk_live_abc", "https://dashboard.stripe.com")],
)  # fmt: skip
def test_real_stripe_links_the_ids_to_its_dashboard(
    session: Session, monkeypatch: pytest.MonkeyPatch, key: str, base: str
) -> None:
    uid = _customer(session, "linked@example.com")
    _subscribe(session, uid)
    monkeypatch.setenv("STRIPE_SECRET_KEY", key)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_abc")
    for plan in ("basic", "pro", "enterprise"):
        monkeypatch.setenv(f"STRIPE_PRICE_{plan.upper()}", f"price_{plan}")
    _clear_caches()

    sub = admin_state.load_detail(uid)["subscription"]
    assert sub.customer_url == f"{base}/customers/cus_drawer1"
    assert sub.subscription_url == f"{base}/subscriptions/sub_drawer1"


# ------------------------------------------------------------------ opening another user


class _Locked:
    """The state as a background handler sees it: `async with self` around each change
    (Reflex's StateProxy, without the state manager a test has no app for)."""

    def __init__(self, state: AdminState) -> None:
        object.__setattr__(self, "_state", state)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._state, name, value)

    async def __aenter__(self) -> _Locked:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


LOAD_DETAIL = AdminState.event_handlers["load_detail"].fn


class _InTransit:
    """Replaces the loader: each call reads the detail at once, then its answer waits
    until released (a slow network, a busy worker), so answers can arrive out of order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._real = admin_state.load_detail
        self.held: list[threading.Event] = []
        self._read = threading.Semaphore(0)
        monkeypatch.setattr(admin_state, "load_detail", self._load)

    def _load(self, user_id: int) -> dict[str, Any]:
        data = self._real(user_id)
        gate = threading.Event()
        self.held.append(gate)
        self._read.release()
        assert gate.wait(10), "answer never released"
        return data

    async def start(self, st: AdminState) -> asyncio.Task[None]:
        """load_detail as the drawer runs it, up to its answer being read and held."""
        task = asyncio.create_task(LOAD_DETAIL(_Locked(st)))
        assert await asyncio.to_thread(self._read.acquire, True, 10)
        return task

    async def deliver(self, n: int, task: asyncio.Task[None]) -> None:
        self.held[n].set()
        await task


def _two_customers(session: Session) -> tuple[AdminState, int, int]:
    """An admin's console listing A (paying, with an invoice and an override) and B."""
    admin = make_user(session, email="boss@example.com", admin=True)
    a = _customer(session, "first@example.com")
    _subscribe(session, a)
    _invoice(session, a)
    quotas.set_override(session, a, "tokens", 777, "Pilot customer")
    b = make_user(session, email="second@example.com").id
    st = state_for(AdminState, cookie=cookie_for(session, admin.id), path="/admin/billing")
    asyncio.run(st.on_load())
    st.users = admin_state.load_users("", admin_state.ALL, admin_state.ALL, "-created", 1)["rows"]
    return st, a, b


def _shows_nothing_of_first(st: AdminState) -> None:
    assert (st.detail_email, st.detail_role) == ("second@example.com", "")
    assert st.detail_sub == views.AdminSubscriptionView()
    assert (st.detail_invoices, st.detail_meters, st.detail_quotas, st.detail_audit) == (
        [], [], [], []
    )  # fmt: skip
    assert st.detail_loading  # the drawer shows a placeholder instead


def _shows_second(st: AdminState) -> None:
    assert st.detail_email == "second@example.com"
    assert not st.detail_sub.has_subscription and st.detail_invoices == []
    assert st.detail_audit == []
    assert {q.metric: q.limit_text for q in st.detail_quotas}["tokens"] == "10,000"
    assert not st.detail_loading


def test_opening_another_user_shows_nothing_of_the_previous_one_until_it_loads(
    session: Session, frozen_clock: FrozenClock
) -> None:
    st, a, b = _two_customers(session)
    asyncio.run(st.open_user(a))
    asyncio.run(LOAD_DETAIL(_Locked(st)))
    assert st.detail_email == "first@example.com"
    assert st.detail_sub.headline == "Pro · $99.00 / month"
    assert [i.number for i in st.detail_invoices] == ["DRAWER-0001"]
    assert [x.reason for x in st.detail_audit] == ["Pilot customer"]

    # B's drawer: B's email and name from the list at once, a placeholder for the rest.
    asyncio.run(st.open_user(b))
    _shows_nothing_of_first(st)
    asyncio.run(LOAD_DETAIL(_Locked(st)))
    _shows_second(st)

    # Reopening the user already shown keeps their detail while it refreshes.
    asyncio.run(st.open_user(b))
    assert not st.detail_loading and st.detail_quotas


def test_a_late_answer_for_a_user_opened_before_is_dropped(
    session: Session, frozen_clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, a, b = _two_customers(session)
    wire = _InTransit(monkeypatch)

    async def scenario() -> None:
        await st.open_user(a)
        await wire.deliver(0, await wire.start(st))
        assert st.detail_email == "first@example.com"
        # A reload of A (as a saved override sends) is on its way when B is opened.
        for_a = await wire.start(st)
        await st.open_user(b)
        for_b = await wire.start(st)
        # A's answer arrives while B's is still on its way: B's drawer keeps waiting.
        await wire.deliver(1, for_a)
        _shows_nothing_of_first(st)
        await wire.deliver(2, for_b)
        _shows_second(st)

        # A's answer after B's: still B.
        await st.open_user(a)
        again_a = await wire.start(st)
        await st.open_user(b)
        again_b = await wire.start(st)
        await wire.deliver(4, again_b)
        await wire.deliver(3, again_a)
        _shows_second(st)

    asyncio.run(scenario())


def test_an_older_answer_for_the_same_user_does_not_undo_a_newer_one(
    session: Session, frozen_clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, _a, b = _two_customers(session)
    wire = _InTransit(monkeypatch)

    async def scenario() -> None:
        await st.open_user(b)
        before = await wire.start(st)
        # An override saved meanwhile reloads the drawer; the newer answer comes first.
        quotas.set_override(session, b, "tokens", 5_000, "Trial cap")
        after = await wire.start(st)
        await wire.deliver(1, after)
        await wire.deliver(0, before)
        assert {q.metric: q.limit_text for q in st.detail_quotas}["tokens"] == "5,000"
        assert [x.reason for x in st.detail_audit] == ["Trial cap"]

    asyncio.run(scenario())


def test_closing_the_drawer_focuses_by_reflex_events_not_a_script() -> None:
    """Python only, no hand-written JS: the focus goes back through rx.set_focus (to the
    opener row's button, or to the search box), compiled, with no script string."""
    from billing_app.pages.admin import console

    compiled = str(console())
    assert "_call_script" not in compiled
    assert '"ref_drawer_opener"' in compiled and '"ref_user_search"' in compiled
    # The ref the focus goes to is on the row's buttons (email and Details) and on an
    # invoice's customer, and only the opener's carries it. A phone's cards have their
    # own ref: a foreach sets the page's ref as it renders, and the cards' (after the
    # table's) took the table's away.
    assert len(re.findall(r"ref:ref_drawer_opener\b", compiled)) == 3
    assert compiled.count("ref:ref_drawer_opener_card") == 3
    assert '"ref_drawer_opener_card"' in compiled


def _browser_side_events(answer: Any) -> list[str]:
    """The names of the answer's events the browser runs itself (a box's value set, a
    focus): "_set_value" emptied the form's boxes whatever they held by then."""
    events = answer if isinstance(answer, list) else [answer] if answer is not None else []
    return [str(e) for e in events if "_set_value" in str(e)]


def test_a_save_leaves_text_typed_after_the_enter_to_the_box_and_the_state(
    session: Session,
) -> None:
    """Enter, then more keys before the answer (they reach the state after the save):
    the answer emptied the boxes whatever they held by then, the text typed after the
    Enter gone from the box but kept by the state. The answer now says what it took;
    the page empties only a box still holding that, and tells the state (settle)."""
    admin = make_user(session, email="after-admin@example.com", admin=True)
    target = make_user(session, email="after-target@example.com")
    st = state_for(AdminState, cookie=cookie_for(session, admin.id), path="/admin/billing")
    asyncio.run(st.on_load())
    asyncio.run(st.open_user(target.id))
    st.set_override_limit("1000")
    st.set_override_reason("First pass")
    answer = asyncio.run(st.submit_override({}))
    assert st.override_saved == "Tokens limit saved."
    assert _browser_side_events(answer) == []
    assert st.override_sent.pending
    assert st.override_sent.texts == {"override-limit": "1000", "override-reason": "First pass"}
    st.set_override_limit("10000")  # typed on after the Enter
    st.settle_override()  # the page kept that box (it differs) and emptied the reason
    assert (st.override_limit, st.override_reason) == ("10000", "")
    assert not st.override_sent.pending
    # The next Enter saves what the box shows.
    st.set_override_reason("Second pass")
    asyncio.run(st.submit_override({}))
    assert limit_of(session, target.id, "tokens") == 10_000
    # Typed on and back to the very text saved: the page empties that box, so does the
    # state.
    st.set_override_limit("100001")
    st.set_override_limit("10000")
    st.settle_override()
    assert (st.override_limit, st.override_reason) == ("", "")

    st.set_key_name("after-key")
    answer = asyncio.run(st.submit_key({}))
    assert st.new_secret.startswith("bk_") and _browser_side_events(answer) == []
    assert st.key_sent.texts == {"key-name": "after-key", "key-service": ""}
    st.set_key_name("after-key-two")
    st.settle_key()
    assert st.key_name == "after-key-two"


def test_the_page_empties_a_saved_box_in_the_browser_and_focuses_by_reflex_events() -> None:
    """Python only, no hand-written JS: each form box's text is kept in the browser
    (ClientStateVar), the answer's check against it is a compiled condition, and a
    drawer opened from an invoice gives the focus back to the Invoices tab's filter."""
    from billing_app.pages.admin import console

    page = console()
    compiled = str(page)
    hooks = "\n".join(page._get_all_hooks())  # where on_mount's events are compiled
    assert "_call_script" not in compiled + hooks
    for field in ("override_limit", "override_reason", "key_name", "key_service"):
        # The event that empties the box is the browser's check of what the box holds
        # against what the save took: a condition, not an order.
        empties = f'_set_value", ({{ ["ref"] : "ref_{field}"'
        (event,) = [e for e in hooks.split("addEvents(") if empties in e]
        box = field.replace("_", "-")
        assert f"refs['_client_state_dict_typed_{field}']" in event, event
        assert f'["texts"]?.["{box}"]' in event and " === " in event, event
        assert event.index("===") < event.index("_set_value"), event
    assert ".settle_override" in hooks and ".settle_key" in hooks
    assert '"ref_invoice_status_filter"' in compiled
    assert compiled.count("ref:ref_invoice_status_filter") == 1


def test_the_drawers_compact_invoice_table_shows_each_invoices_description() -> None:
    """The drawer's three-column table (components.common, compact) names what an invoice
    bills for, as the billing page and the Invoices tab do."""
    from billing_app.components.common import invoice_table
    from billing_app.states.admin import AdminState

    compiled = str(invoice_table(AdminState.detail_invoices, "drawer", compact=True))
    assert compiled.count('inv_rx_state_?.["description"]') >= 2  # its test, then its text
