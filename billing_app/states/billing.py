"""The /billing dashboard: plan, live usage bars, chart, plan cards, invoices."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import reflex as rx
from reflex.experimental.client_state import ClientStateVar

from billing_app.db import read_session, session_scope
from billing_app.errors import BillingError
from billing_app.metrics import METRICS
from billing_app.plans import PAID_PLAN_KEYS, get_catalog
from billing_app.services import invoices, metering, quotas, subscriptions
from billing_app.states import views
from billing_app.states.live import (
    client_connected,
    in_thread,
    is_newest,
    outage_as_error,
    start_load,
)
from billing_app.states.session import SessionState, user_from_cookie

log = logging.getLogger(__name__)

POLL_SECONDS = 1.5
# Every Nth poll also refreshes the slower-moving parts (chart, invoices), and so does a
# poll that finds usage or the subscription changed.
SLOW_EVERY = 4
INVOICES_PER_PAGE = 10
ROUTE = "/billing"
# The page load, paging and the poller each number their reads (live.start_load): only
# the newest read of each part is shown.
LIVE, SLOW = "_live_load", "_slow_load"
# The Stripe button the person pressed (a plan's key, "portal" or "fix"), held in the browser:
# it shows as working from the press, not from the server's answer (a slow link takes
# seconds). The handlers clear it wherever they do not navigate away, and so does the page's
# load, which Reflex 0.10 runs again on each socket (re)connect: a press whose answer went
# with a dropped socket is released there.
PRESSED = ClientStateVar.create("stripe_pressed", default="")
# How long after coming back from the portal a change its webhook brings is still told
# as the portal's (the notice names it); Stripe sends it within seconds, usually.
PORTAL_WATCH_SECONDS = 120.0
# Presses are numbered (live.start_load): an answer is shown only for the newest.
PRESS = "_press"
# A press's Stripe call still running this long after it started is taken as lost (its
# worker restarted with the state kept in Redis): a reconnect then releases its button.
PRESS_LOST_SECONDS = 60.0
# The cookie stopped signing anyone in while the page was open (the session expired or was
# revoked, the account deleted): the page stops reading, and says so rather than look live.
SIGNED_OUT = "You are signed out, so this page no longer updates. Reload it to sign in again."


@dataclass
class LiveData:
    """What one poll reads: cheap, indexed lookups only."""

    meters: list[views.MeterView]
    sub: views.SubscriptionView
    plans: list[views.PlanView]
    resets_text: str = ""
    limit_notices: list[str] = field(default_factory=list)


@dataclass
class SlowData:
    history: list[dict[str, Any]] = field(default_factory=list)
    invoices: list[views.InvoiceView] = field(default_factory=list)
    invoice_total: int = 0
    invoice_page: int = 1
    invoice_pages: int = 1
    credit_text: str = ""
    due: views.DueView = field(default_factory=views.DueView)


def _short_day(day: str) -> str:
    """A chart day as the page writes dates ("Dec 1", as in "Resets on Jan 1, 2027"),
    not "12-01"."""
    d = date.fromisoformat(day[:10])
    return f"{d:%b} {d.day}"


def load_live(user_id: int) -> LiveData:
    catalog = get_catalog()
    with outage_as_error(), read_session() as session:
        statuses = metering.summary(session, user_id)
        dto = subscriptions.get_subscription_dto(session, user_id)
        held = subscriptions.held_subscription(session, user_id)
        # Only for a used-up meter: its notice says whether an upgrade would lift it.
        overridden = (
            {q.metric for q in quotas.get_quotas(session, user_id) if q.source == "admin"}
            if any(not m.unlimited and m.limit and m.used >= m.limit for m in statuses)
            else set()
        )
    sub = views.subscription_view(dto, catalog, held)
    return LiveData(
        meters=[views.meter_view(m) for m in statuses],
        sub=sub,
        plans=views.plan_views(catalog, sub.plan),
        resets_text=views.usage_resets_text(statuses[0], dto) if statuses else "",
        limit_notices=views.limit_notices(
            statuses,
            catalog,
            sub.plan,
            overridden,
            payment_due=sub.held
            or (sub.past_due and dto is not None and dto.effective_plan == "free"),
            first_payment=sub.awaits_first_payment,
            cancels=sub.cancels,
        ),
    )


def load_slow(user_id: int, invoice_page: int) -> SlowData:
    with outage_as_error(), read_session() as session:
        history = [h.to_dict() for h in metering.daily_history(session, user_id)]
    out = SlowData(history=history)
    with outage_as_error(), read_session() as session:
        page = invoices.list_invoices(
            session,
            user_id=user_id,
            page=invoice_page,
            per_page=INVOICES_PER_PAGE,
            customer_view=True,
        )
        credit, currency = invoices.credit_balance(session, user_id)
        due = invoices.payment_due(session, user_id)
    out.due = views.due_view(due)
    out.credit_text = views.credit_text(credit, currency)
    out.invoices = [views.invoice_view(i) for i in page.items]
    out.invoice_total = page.total
    out.invoice_page = page.page
    out.invoice_pages = page.pages
    return out


def start_checkout(user_id: int, plan_key: str) -> str:
    from billing_app.services import billing

    with outage_as_error(), session_scope() as session:
        return billing.create_checkout_session(session, user_id, plan_key)


def open_portal(user_id: int) -> str:
    from billing_app.services import billing

    with outage_as_error(), session_scope() as session:
        return billing.create_portal_session(session, user_id)


class BillingState(SessionState):
    sub: views.SubscriptionView = views.SubscriptionView()
    meters: list[views.MeterView] = []
    plans: list[views.PlanView] = []
    # "Resets on Jan 1, 2027", or why it differs from the billing date (views.usage_resets_text).
    resets_text: str = ""
    # One sentence per used-up meter: which one, by how much, until when.
    limit_notices: list[str] = []
    history: list[dict[str, Any]] = []
    chart_metric: str = "tokens"
    invoices: list[views.InvoiceView] = []
    invoice_page: int = 1
    invoice_pages: int = 1
    invoice_total: int = 0
    # "Credit balance: $461.00 ..." while Stripe holds a credit for this customer; "" else.
    credit_text: str = ""
    # The failed payment the past-due banner names (views.due_view); empty without one.
    due: views.DueView = views.DueView()
    loaded: bool = False
    # "success" / "canceled" after returning from Checkout; "" otherwise.
    checkout_notice: str = ""
    # What changed in the customer portal (views.portal_change_text), once back from it.
    portal_notice: str = ""
    # The plan whose button is waiting for Stripe, or "portal".
    busy: str = ""
    error: str = ""
    # The page's socket while redirecting away from ?checkout=: that page's next load
    # keeps checkout_notice. A reload is a new socket, so it never does, even if the
    # redirect's own load never reached us (the reload cut it off).
    _notice_socket: str = ""
    # The Checkout Session whose notice this tab has shown: loading its return URL again
    # (a reload before the redirect that drops the query took effect, Back to it) shows
    # it no second time. The tab keeps its State over a reload.
    _notice_shown_for: str = ""
    # The plan as the page showed it on coming back from the portal, until the change made
    # there shows (or PORTAL_WATCH_SECONDS pass): the notice says what changed.
    _portal_from: views.SubscriptionView | None = None
    _portal_until: float = 0.0
    # Bumped by each page load: an older poller sees a newer generation and stops.
    _poll_gen: int = 0
    _live_load: int = 0
    _slow_load: int = 0
    # `error` tells of a failed load (not of a plan button's): the next good load clears it.
    _load_error: bool = False
    # The page of the invoices shown: a failed load of another puts the pager back on it.
    _invoice_page_shown: int = 1
    _press: int = 0
    # When the running press's Stripe call started (time.time(), any worker); 0: none runs.
    _press_since: float = 0.0

    # ------------------------------------------------------------ derived

    @rx.var(cache=True)
    def chart_data(self) -> list[dict[str, Any]]:
        """One point per day of the current period for the chosen metric."""
        return [
            {"day": _short_day(h["day"]), "value": h["quantity"]}
            for h in self.history
            if h.get("metric") == self.chart_metric
        ]

    @rx.var(cache=True)
    def chart_total(self) -> str:
        total = sum(h["quantity"] for h in self.history if h.get("metric") == self.chart_metric)
        return f"{total:,}"

    @rx.var(cache=True)
    def chart_empty(self) -> bool:
        """No usage of the chosen metric this period: the card says so, not an axis of 0-4."""
        return not any(h["quantity"] for h in self.history if h.get("metric") == self.chart_metric)

    @rx.var(cache=True)
    def chart_label(self) -> str:
        m = METRICS.get(self.chart_metric)
        return m.plural if m else self.chart_metric

    @rx.var(cache=True)
    def near_limit_text(self) -> str:
        return views.near_limit_text(self.meters)

    @rx.var(cache=True)
    def usage_alert(self) -> str:
        return views.usage_alert_text(self.meters)

    # ------------------------------------------------------------ events

    @rx.event
    async def on_load(self) -> Any:
        """Guard, then load everything and start the live poller. Also run on each socket
        reconnect (Reflex 0.10's hydrate_and_load), so it releases a lost press first."""
        released = self._release_lost_press()
        try:
            user = await self._current_user()
        except BillingError as err:
            # The database is down: who this is is not known yet. The poller reads again
            # each tick; its first full read takes the message away.
            self._load_failed(err)
            return [*released, BillingState.poll]
        if user is None:
            return self._login_redirect()  # released by this page's next load
        checkout = self.router.url.query_parameters.get("checkout")
        if checkout is not None:
            notice = {"success": "success", "canceled": "canceled", "cancel": "canceled"}
            self.checkout_notice = notice.get(checkout, "")
            session_id = self.router.url.query_parameters.get("session_id", "")
            if session_id and session_id == self._notice_shown_for:
                self.checkout_notice = ""
            elif session_id and self.checkout_notice:
                self._notice_shown_for = session_id
            # Shown once: drop the query (replacing the history entry), so a reload or
            # Back does not bring the banner back. The next load keeps the notice.
            self._notice_socket = self.router.session.session_id if self.checkout_notice else ""
            return rx.redirect(ROUTE, replace=True)
        if self.router.url.query_parameters.get("portal") is not None:
            # Back from the portal: what this tab showed before is what it changed from (a
            # tab that had not shown the page has nothing to compare, so tells nothing).
            self.checkout_notice = self.portal_notice = ""
            self._portal_from = self.sub if self.loaded else None
            self._portal_until = time.time() + PORTAL_WATCH_SECONDS
            self._notice_socket = self.router.session.session_id if self._portal_from else ""
            return rx.redirect(ROUTE, replace=True)
        if not self._notice_socket or self._notice_socket != self.router.session.session_id:
            self.checkout_notice = self.portal_notice = ""
            self._portal_from = None
        self._notice_socket = ""
        self.error = ""
        return [*released, BillingState.refresh, BillingState.poll]

    def _release_lost_press(self) -> list[Any]:
        """The buttons back to usable, unless a press's Stripe call still runs: its answer
        (the redirect, or the error) reaches the reconnected socket. A press whose answer went
        with a dropped socket, or whose worker went, is released: PRESSED lives in the
        browser, which a restarted server knows nothing of, so it is always cleared. A press
        again opens the same Checkout (services.billing's idempotency window) or a new one,
        which expires the lost one: never two to pay."""
        if self._press_since and time.time() - self._press_since < PRESS_LOST_SECONDS:
            return []
        if self._press_since:
            start_load(self, PRESS)  # the lost call's late answer is dropped
        self._press_since = 0.0
        self.busy = ""
        return [PRESSED.push("")]

    @rx.event(background=True)
    async def refresh(self) -> Any:
        async with self:
            cookie = self.router.headers.cookie
            page = self.invoice_page
            live_n, slow_n = start_load(self, LIVE), start_load(self, SLOW)
        try:
            user = await in_thread(lambda: user_from_cookie(cookie))
            if user is None:
                async with self:
                    return self._signed_out()
            live = await in_thread(lambda: load_live(user.id))
            slow = await in_thread(lambda: load_slow(user.id, page))
        except BillingError as err:
            async with self:
                # Nothing applied: the page keeps its last answer whole, and says why. (The
                # poller reads LIVE every tick, so SLOW tells whether this is still newest.)
                if is_newest(self, SLOW, slow_n):
                    self._load_failed(err)
            return
        async with self:
            self._apply_newest(live, live_n, slow, slow_n)

    @rx.event(background=True)
    async def poll(self) -> Any:
        """Re-read usage every POLL_SECONDS while this tab is open on /billing.

        Started from on_load, so Reflex 0.10 already cancels it when the tab
        disconnects or another page loads (measured); the checks below also stop
        it if it ever outlives those (another worker, a newer page load).
        """
        async with self:
            self._poll_gen += 1
            gen = self._poll_gen
            token = self.router.session.client_token
        tick = 0
        while True:
            await asyncio.sleep(POLL_SECONDS)
            async with self:
                if (
                    gen != self._poll_gen
                    or not client_connected(token)
                    or self.router.url.path.rstrip("/") != ROUTE
                ):
                    return
                cookie = self.router.headers.cookie
                page = self.invoice_page
                tick += 1
                # Until the page has shown, every tick reads all of it: a failed first load
                # is retried, and the newest full read is the one that shows the page.
                live_n = start_load(self, LIVE)
                slow_n = start_load(self, SLOW) if tick % SLOW_EVERY == 0 or not self.loaded else 0
                shown = (list(self.meters), self.sub)
            try:
                user = await in_thread(lambda: user_from_cookie(cookie))  # noqa: B023
                if user is None:
                    # Signed out meanwhile, or (a page first opened while the database was
                    # down) never known: the poller stops, and the page says so (_signed_out).
                    async with self:
                        if gen == self._poll_gen:
                            return self._signed_out()
                    return
                live = await in_thread(lambda: load_live(user.id))  # noqa: B023
                slow = None
                if not slow_n and (live.meters, live.sub) != shown:
                    # Usage or the plan moved: the chart's total and the invoices go with
                    # the bars in one update, never a tick (or a few) behind them.
                    async with self:
                        if gen != self._poll_gen:
                            return
                        slow_n = start_load(self, SLOW)
                if slow_n:
                    slow = await in_thread(lambda: load_slow(user.id, page))  # noqa: B023
            except BillingError as err:  # the database is down: say so, and read again next tick
                async with self:
                    if gen != self._poll_gen:
                        return
                    if is_newest(self, LIVE, live_n):
                        self._load_failed(err)
                continue
            except Exception:  # a bug must not stop the live view: logged, read again next tick
                log.exception("the /billing poller's read failed; reading again next tick")
                continue
            async with self:
                if gen != self._poll_gen:
                    return
                if not self.signed_in:  # the page load could not tell who this is
                    self._show_user(user)
                self._apply_newest(live, live_n, slow, slow_n)

    def _apply_newest(
        self, live: LiveData, live_n: int, slow: SlowData | None, slow_n: int
    ) -> None:
        """Apply what is still the newest read of its part. A read started before a newer
        one (a tick before Next's page, a page before the next) is dropped."""
        live_shown = is_newest(self, LIVE, live_n)
        if live_shown:
            self._apply_live(live)
        if slow is None or not is_newest(self, SLOW, slow_n):
            return
        self._apply_slow(slow)
        if self._load_error:
            self.error = ""
            self._load_error = False
        if live_shown:
            self.loaded = True

    def _signed_out(self) -> Any:
        """Nobody is signed in any more: a page not yet shown goes to sign in; a shown one
        (not sent away: a Sign out in this tab is on its way to /login?signed_out=1) says
        it stopped, and keeps the pager on the invoices it shows."""
        if not self.loaded:
            return self._login_redirect()
        self.error = SIGNED_OUT
        self._load_error = False
        self.invoice_page = self._invoice_page_shown
        return None

    def _load_failed(self, err: BillingError) -> None:
        """A load's failure: its message, which the next good full read takes away."""
        self.error = err.message
        self._load_error = True
        self.invoice_page = self._invoice_page_shown

    def _apply_live(self, live: LiveData) -> None:
        if self._portal_from is not None:
            text = views.portal_change_text(self._portal_from, live.sub)
            if text:
                self.portal_notice = text
            if text or time.time() > self._portal_until:
                self._portal_from = None
        if live.meters != self.meters:
            self.meters = live.meters
        if live.sub != self.sub:
            self.sub = live.sub
        if self.checkout_notice == "success" and live.sub.past_due:
            # "Thanks — your plan is active" beside "Your last payment failed": the banner
            # alone says where the plan stands. (Not when held: a Checkout's subscription
            # is briefly `incomplete` until its webhook says it is paid.)
            self.checkout_notice = ""
        if live.plans != self.plans:
            self.plans = live.plans
        if live.resets_text != self.resets_text:
            self.resets_text = live.resets_text
        if live.limit_notices != self.limit_notices:
            self.limit_notices = live.limit_notices

    def _apply_slow(self, slow: SlowData) -> None:
        if slow.history != self.history:
            self.history = slow.history
        if slow.invoices != self.invoices:
            self.invoices = slow.invoices
        self.invoice_total = slow.invoice_total
        self.credit_text = slow.credit_text
        if slow.due != self.due:
            self.due = slow.due
        self.invoice_page = self._invoice_page_shown = slow.invoice_page
        self.invoice_pages = slow.invoice_pages

    @rx.event
    def set_chart_metric(self, metric: str | list[str]) -> None:
        metric = metric[0] if isinstance(metric, list) else metric
        if metric in METRICS:
            self.chart_metric = metric

    @rx.event
    def dismiss_notice(self) -> None:
        self.checkout_notice = self.portal_notice = ""

    @rx.event
    def dismiss_error(self) -> None:
        self.error = ""

    @rx.event
    def next_invoices(self) -> Any:
        if self.invoice_page < self.invoice_pages:
            self.invoice_page += 1
            return BillingState.refresh
        return None

    @rx.event
    def prev_invoices(self) -> Any:
        if self.invoice_page > 1:
            self.invoice_page -= 1
            return BillingState.refresh
        return None

    @rx.event(background=True)
    async def choose_plan(self, plan_key: str) -> Any:
        """A plan card's button: Checkout for a new subscriber, the portal for a subscriber."""
        if plan_key not in PAID_PLAN_KEYS:
            return PRESSED.push("")
        async with self:
            if self.busy:
                return None  # the first press's answer releases the button
            try:
                user = await self._current_user()
            except BillingError as err:
                self._button_failed(err.message)
                return PRESSED.push("")
            if user is None:
                return [PRESSED.push(""), self._login_redirect()]
            subscriber = self.sub.is_subscriber
            press = self._start_press(plan_key)
        return await self._go_to_stripe(
            press,
            lambda: open_portal(user.id) if subscriber else start_checkout(user.id, plan_key),
        )

    @rx.event(background=True)
    async def manage_subscription(self) -> Any:
        async with self:
            if self.busy:
                return None
            try:
                user = await self._current_user()
            except BillingError as err:
                self._button_failed(err.message)
                return PRESSED.push("")
            if user is None:
                return [PRESSED.push(""), self._login_redirect()]
            press = self._start_press("portal")
        return await self._go_to_stripe(press, lambda: open_portal(user.id))

    def _start_press(self, key: str) -> int:
        """Inside `async with self`: the press's number, its button busy."""
        self.busy = key
        self.error = ""
        self._press_since = time.time()
        return start_load(self, PRESS)

    async def _go_to_stripe(self, press: int, call: Any) -> Any:
        message = ""
        url = ""
        try:
            url = await in_thread(call)
        except BillingError as err:
            message = err.message
        except Exception:
            message = "Could not reach the payment provider. Please try again."
        async with self:
            if not is_newest(self, PRESS, press):
                # Taken as lost and released meanwhile (see _release_lost_press): the
                # buttons are the newer press's, or free.
                return None
            self._press_since = 0.0
            if message:
                self._button_failed(message)
        if message:
            return PRESSED.push("")
        # A different host, so the browser does a full navigation (is_external would open a
        # tab). The button stays pressed until the page goes.
        return rx.redirect(url)

    def _button_failed(self, message: str) -> None:
        self.busy = ""
        self.error = message
        self._load_error = False  # a plan button's error: loads do not clear it
