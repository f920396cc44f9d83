"""The /admin/billing console: headline numbers, users, invoices, quota overrides, API keys.

Every handler re-checks the admin role from the server-side session first.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import reflex as rx

from billing_app.clock import utcnow
from billing_app.db import read_session, session_scope
from billing_app.errors import BillingError
from billing_app.metrics import METRICS
from billing_app.plans import PLAN_KEYS, get_catalog
from billing_app.services import admin as admin_service
from billing_app.services import invoices, quotas
from billing_app.services.dto import UserDTO
from billing_app.states import format as fmt
from billing_app.states import views
from billing_app.states.live import in_thread, is_newest, outage_as_error, start_load
from billing_app.states.session import SessionState, clip

USERS_PER_PAGE = 20
INVOICES_PER_PAGE = 15
# Values are the admin service's sort keys ("-" = descending).
SORTS = {
    "-created": "Newest first",
    "created": "Oldest first",
    "email": "Email A–Z",
    "-quota": "Closest to a limit",
    **{f"-usage_{k}": f"Most {m.plural}" for k, m in METRICS.items()},
    **{f"usage_{k}": f"Least {m.plural}" for k, m in METRICS.items()},
}
# Every status a row's badge can show (the service's STATUS_FILTERS), so each can be listed.
STATUSES = ("active", "trialing", "past_due", "canceled", "unpaid", "incomplete",
            "incomplete_expired", "paused", "none")  # fmt: skip
# The service's USAGE_FILTERS, as the select names them.
USAGE = {"over": "At or over a limit", "near": "Near a limit (80%+)", "override": "Quota override"}
# One per badge the invoices table shows: "credit" apart from "paid" (services.invoices).
INVOICE_STATUSES = invoices.ADMIN_FILTERS
ALL = "all"  # the select's "no filter" value (Radix selects cannot hold "")
# The console's tabs (the page's rx.tabs values); the first is where a new visit starts.
TABS = ("users", "invoices", "keys")
KEY_ACCESS = views.KEY_ACCESS
_KEY_SCOPES = {choice: list(scopes) for choice, _label, scopes in KEY_ACCESS}
DRAWER_AUDIT = 10  # "Recent changes" in the user drawer
# Element ids the state gives focus to: the Invoices tab's status filter, and its
# customer chip (the drawer_opener of a drawer closed by "All invoices").
INVOICE_FILTER_ID = "invoice-status-filter"
SEARCH_ID = "user-search"
CUSTOMER_FILTER = "customer-filter"
# Before an opener (open_user): the button is on a phone's card, not in the table.
CARD = "card-"
# Each part of the console numbers its loads (live.start_load); only the newest one's
# answer or error is shown. The stat cards load with the users list, under its number.
USERS, INVOICES, KEYS, DETAIL = "_users_load", "_invoices_load", "_keys_load", "_detail_load"


def load_users(
    q: str, plan: str, status: str, sort: str, page: int, usage: str = ALL
) -> dict[str, Any]:
    filters = admin_service.UserFilters(
        q=q,
        plan=None if plan == ALL else plan,
        status=None if status == ALL else status,
        usage=None if usage == ALL else usage,
        sort=sort,
    )
    with outage_as_error(), read_session() as session:
        result = admin_service.list_users(session, filters, page=page, per_page=USERS_PER_PAGE)
        if page > result.pages:  # fewer match now (a Refresh): their last page, not nothing
            result = admin_service.list_users(
                session, filters, page=result.pages, per_page=USERS_PER_PAGE
            )
    return {
        "rows": [views.admin_user_view(r) for r in result.items],
        "total": result.total,
        "page": result.page,
        "pages": result.pages,
    }


def load_stats() -> list[views.StatView]:
    with outage_as_error(), read_session() as session:
        return views.stat_views(admin_service.headline_stats(session))


def load_invoices(status: str, page: int, user_id: int = 0) -> dict[str, Any]:
    """A page of the Invoices tab: every customer's, or (`user_id`) one customer's."""
    shown = None if status == ALL else status
    owner = user_id or None
    with outage_as_error(), read_session() as session:
        result = invoices.list_invoices(
            session, user_id=owner, shown=shown, page=page, per_page=INVOICES_PER_PAGE
        )
        if page > result.pages:  # fewer match now: their last page, not "31–12 of 12"
            result = invoices.list_invoices(
                session, user_id=owner, shown=shown, page=result.pages, per_page=INVOICES_PER_PAGE
            )
    return {
        "rows": [views.invoice_view(i) for i in result.items],
        "total": result.total,
        "page": result.page,
        "pages": result.pages,
    }


def load_keys() -> list[views.ApiKeyView]:
    from billing_app.services import api_keys

    with outage_as_error(), read_session() as session:
        return [views.api_key_view(k) for k in api_keys.list_keys(session)]


def create_and_list_keys(
    name: str, service: str, scopes: list[str]
) -> tuple[int, str, list[views.ApiKeyView]]:
    """A new service key (its id and its secret, shown once) and the keys' list after it."""
    from billing_app.services import api_keys

    with outage_as_error(), session_scope() as session:
        key, secret = api_keys.create_key(
            session, name=name, service_name=service or None, scopes=scopes
        )
        return key.id or 0, secret, [views.api_key_view(k) for k in api_keys.list_keys(session)]


def revoke_and_list_keys(key_id: int) -> list[views.ApiKeyView]:
    from billing_app.services import api_keys

    with outage_as_error(), session_scope() as session:
        api_keys.revoke_key(session, key_id)
        return [views.api_key_view(k) for k in api_keys.list_keys(session)]


def load_detail(user_id: int) -> dict[str, Any]:
    # The admin API's own detail (GET /api/billing/admin/users/{id}): one source for both.
    with outage_as_error(), read_session() as session:
        detail = admin_service.user_detail(session, user_id, audit_limit=DRAWER_AUDIT)
        row = admin_service.user_row(session, user_id)
    user = detail.user
    return {
        "id": user.id,
        "email": user.email,
        "name": user.display_name,
        "role": user.role,
        "subscription": views.admin_subscription_view(
            detail.subscription, user, get_catalog(), admin_service.stripe_dashboard_base()
        ),
        "invoices": [views.invoice_view(i) for i in detail.invoices],
        "meters": [views.meter_view(m) for m in detail.usage],
        "quotas": [views.quota_view(q) for q in detail.quotas],
        "audit": [views.audit_view(a) for a in detail.audit_log],
        # The users list's row for the user as it reads now (stale_lists compares it).
        "row": None if row is None else views.admin_user_view(row),
    }


# What a users row and the drawer both show of the billing (not the meters: usage moves
# all the time, and the list says when it read it).
_ROW_BILLING = ("plan_name", "status", "ends_text", "owed_text")
_INVOICE_SHOWN = ("number", "amount", "amount_note", "status_label")


def stale_lists(
    data: dict[str, Any],
    users: list[views.AdminUserView],
    invoices: list[views.InvoiceView],
    narrowed_first_page: bool,
) -> tuple[bool, bool]:
    """(users, invoices): which of the lists behind the drawer say something else of its
    user than the detail just read (a webhook landed since they were read, say).

    Users: the user's listed row, by its billing (plan, status, cancel date, amount owed).
    Invoices: any of the user's listed invoices the drawer shows otherwise; and, when the
    tab lists this customer's invoices from the newest (`narrowed_first_page`), a new or
    gone one among the newest the drawer shows."""
    row, user_id = data.get("row"), data["id"]
    listed = next((u for u in users if u.id == user_id), None)
    users_stale = (
        listed is not None
        and row is not None
        and any(getattr(listed, f) != getattr(row, f) for f in _ROW_BILLING)
    )
    fresh = {i.id: i for i in data["invoices"]}
    mine = [i for i in invoices if i.user_id == user_id]
    invoices_stale = any(
        i.id in fresh and any(getattr(i, f) != getattr(fresh[i.id], f) for f in _INVOICE_SHOWN)
        for i in mine
    )
    if narrowed_first_page and not invoices_stale:
        newest = [i.id for i in data["invoices"]]
        invoices_stale = [i.id for i in mine][: len(newest) or 1] != newest
    return users_stale, invoices_stale


# The example names no user: with the admin's own id, pasting it as it was billed the
# admin 500 tokens. Left empty, USER_ID makes the request a 422 that writes nothing.
_SET_USER = "USER_ID=  # the customer's User ID (the users list's Details shows it)\n"


def curl_example(origin: str, secret: str, can_write: bool = True) -> str:
    """A ready-to-paste request with a new key, for the customer set in USER_ID: posting
    usage, or for a key that may only read, reading it."""
    origin = origin or "http://localhost:8000"
    if not can_write:
        return (
            f'{_SET_USER}curl "{origin}/api/billing/usage?user_id=$USER_ID" \\\n'
            f'  -H "Authorization: Bearer {secret}"'
        )
    body = '{\\"user_id\\": $USER_ID, \\"metric\\": \\"tokens\\", \\"quantity\\": 500}'
    return (
        f"{_SET_USER}curl -X POST {origin}/api/billing/usage \\\n"
        f'  -H "Authorization: Bearer {secret}" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f'  -d "{body}"'
    )


# The longest text each typed field keeps (the pages' fields say so as `max_length`, so
# the box never shows more than the state holds).
SEARCH_MAX, LIMIT_MAX, REASON_MAX, KEY_NAME_MAX = 200, 20, 500, 200

# The pages' form fields (id -> the state var they set) are uncontrolled: a late answer
# must not put older text back. Nor may a save's answer empty a box the admin typed on
# in after the Enter: the save records what it took (SavedFields), and the page, when
# the answer arrives, empties only a box that still holds that (pages.admin.clear_saved).
OVERRIDE_FIELDS = {"override-limit": "override_limit", "override-reason": "override_reason"}
KEY_FIELDS = {"key-name": "key_name", "key-service": "key_service"}


class AdminState(SessionState):
    forbidden: bool = False
    loaded: bool = False
    stats: list[views.StatView] = []
    # When the cards and the users list were read ("As of 14:03 UTC"; the date in its
    # title): the console reads once per visit, so its figures age until a Refresh.
    as_of: str = ""
    as_of_title: str = ""
    # The tab shown, kept in the browser tab's sessionStorage and sent back on hydrate: a
    # reload (or a restarted server) opens the same tab; a new browser tab opens on Users.
    tab: str = rx.SessionStorage(TABS[0], name="admin_tab")

    # users table
    search: str = ""
    plan_filter: str = ALL
    status_filter: str = ALL
    usage_filter: str = ALL
    sort: str = "-created"
    page: int = 1
    pages: int = 1
    total: int = 0
    users: list[views.AdminUserView] = []

    # invoices table
    invoice_status: str = ALL
    invoice_page: int = 1
    invoice_pages: int = 1
    invoice_total: int = 0
    invoices: list[views.InvoiceView] = []
    # The tab narrowed to one customer (from their drawer's "All invoices"); 0: everyone's.
    invoice_user_id: int = 0
    invoice_user_email: str = ""

    # user drawer
    drawer_open: bool = False
    detail_id: int = 0
    detail_loading: bool = False  # a newly opened user's detail has not arrived yet
    # The id of the row's button that opened the drawer: closing it gives focus back there
    # (Radix would return it to a Trigger, and the drawer opens from State, without one).
    drawer_opener: str = ""
    detail_email: str = ""
    detail_name: str = ""
    detail_role: str = ""
    detail_sub: views.AdminSubscriptionView = views.AdminSubscriptionView()
    detail_invoices: list[views.InvoiceView] = []
    detail_meters: list[views.MeterView] = []
    detail_quotas: list[views.QuotaView] = []
    detail_audit: list[views.AuditView] = []
    override_metric: str = "tokens"
    override_limit: str = ""
    override_reason: str = ""
    override_error: str = ""
    override_saved: str = ""
    override_sent: views.SavedFields = views.SavedFields()

    # API keys
    keys: list[views.ApiKeyView] = []
    key_name: str = ""
    key_service: str = ""
    key_access: str = KEY_ACCESS[0][0]
    key_error: str = ""
    new_secret: str = ""
    curl_example: str = ""
    key_sent: views.SavedFields = views.SavedFields()

    error: str = ""
    # Which load's failure `error` tells of ("page", "users", "invoices"): a later good
    # answer for that part takes the message away.
    _error_of: str = ""
    # The pages of the rows shown: a failed load of another puts the pager back on it.
    _page_shown: int = 1
    _invoice_page_shown: int = 1
    _users_load: int = 0
    _invoices_load: int = 0
    _keys_load: int = 0
    _detail_load: int = 0
    _new_key_id: int = 0  # whose secret `new_secret` is

    # ------------------------------------------------------------ derived

    @rx.var(cache=True)
    def plan_options(self) -> list[list[str]]:
        return [[ALL, "All plans"]] + [[k, get_catalog()[k].name] for k in PLAN_KEYS]

    @rx.var(cache=True)
    def status_options(self) -> list[list[str]]:
        return [[ALL, "All statuses"]] + [
            [s, "No subscription" if s == "none" else fmt.status_label(s)] for s in STATUSES
        ]

    @rx.var(cache=True)
    def usage_options(self) -> list[list[str]]:
        return [[ALL, "Any usage"]] + [[k, v] for k, v in USAGE.items()]

    @rx.var(cache=True)
    def opener_listed(self) -> bool:
        """The button that opened the drawer is still on the page: its user's row in the
        users list, or its invoice in the Invoices tab (closing gives it the focus)."""
        if self.drawer_opener == CUSTOMER_FILTER:  # closed by "All invoices": no row
            return False
        opener = self.drawer_opener.removeprefix(CARD)
        if opener.startswith("invoice-"):
            return any(f"invoice-{i.id}" == opener for i in self.invoices)
        return any(u.id == self.detail_id for u in self.users)

    @rx.var(cache=True)
    def opener_key(self) -> str:
        """The opener without CARD: both twins of it (the table's and the phone card's)
        carry the focus ids, as a resize may have hidden the one clicked."""
        return self.drawer_opener.removeprefix(CARD)

    @rx.var(cache=True)
    def invoice_status_options(self) -> list[list[str]]:
        # The badges' own words (views.invoice_view), so a filter names what it lists.
        return [[ALL, "All invoices"]] + [
            [s, "Payment failed" if s == "failed" else fmt.status_label(s)]
            for s in INVOICE_STATUSES
        ]

    @rx.var(cache=True)
    def sort_options(self) -> list[list[str]]:
        return [[k, v] for k, v in SORTS.items()]

    @rx.var(cache=True)
    def metric_options(self) -> list[list[str]]:
        return [[k, m.label] for k, m in METRICS.items()]

    @rx.var(cache=True)
    def users_filtered(self) -> bool:
        """A search or filter narrows the users list (its Clear filters shows)."""
        filters = (self.plan_filter, self.status_filter, self.usage_filter)
        return bool(self.search.strip()) or any(f != ALL for f in filters)

    @rx.var(cache=True)
    def page_text(self) -> str:
        if not self.total:
            return "No users"
        first = (self.page - 1) * USERS_PER_PAGE + 1
        last = min(self.page * USERS_PER_PAGE, self.total)
        return f"{first:,}–{last:,} of {self.total:,}"

    @rx.var(cache=True)
    def invoice_page_text(self) -> str:
        if not self.invoice_total:
            return "No invoices"
        first = (self.invoice_page - 1) * INVOICES_PER_PAGE + 1
        last = min(self.invoice_page * INVOICES_PER_PAGE, self.invoice_total)
        return f"{first:,}–{last:,} of {self.invoice_total:,}"

    @rx.var(cache=True)
    def users_csv_href(self) -> str:
        """The users export (GET /api/billing/admin/users.csv) with the list's filters and
        sort: a plain link, the session cookie signs it."""
        params = {"q": self.search.strip(), "plan": self.plan_filter,
                  "status": self.status_filter, "usage": self.usage_filter,
                  "sort": self.sort}  # fmt: skip
        kept = {k: v for k, v in params.items() if v and v != ALL}
        return "/api/billing/admin/users.csv?" + urlencode(kept)

    @rx.var(cache=True)
    def invoices_csv_href(self) -> str:
        """The invoices export with the tab's status and customer filters."""
        params = {"status": "" if self.invoice_status == ALL else self.invoice_status,
                  "user_id": self.invoice_user_id or ""}  # fmt: skip
        kept = {k: v for k, v in params.items() if v}
        return "/api/billing/admin/invoices.csv" + ("?" + urlencode(kept) if kept else "")

    # ------------------------------------------------------------ guard

    async def _admin(self, part: str) -> UserDTO | None:
        """The signed-in admin, else None. While the database is down nobody is known:
        None, after its message is shown as `part`'s error (see _show_error)."""
        try:
            user = await self._current_user()
        except BillingError as err:
            self._show_error(part, err)
            return None
        if user is None or user.role != "admin":
            self.forbidden = user is not None
            return None
        self.forbidden = False
        return user

    async def _guard(self) -> Any:
        """None when the caller is an admin; else the event to send the browser to."""
        user = await self._current_user()
        if user is None:
            return self._login_redirect()
        self.forbidden = user.role != "admin"
        return None

    # ------------------------------------------------------------ loading

    @rx.event
    async def on_load(self) -> Any:
        try:
            redirect = await self._guard()
        except BillingError as err:  # the database is down: who this is is not known
            self._show_error("page", err)
            return None
        if redirect is not None:
            return redirect
        if self.forbidden:
            return None
        self.drawer_open = False
        self.new_secret = ""
        if self.tab not in TABS:  # sessionStorage is the browser's to edit
            self.tab = TABS[0]
        # A visit's boxes start from the state: no earlier save's answer is still to come.
        self.override_sent = views.SavedFields(seq=self.override_sent.seq)
        self.key_sent = views.SavedFields(seq=self.key_sent.seq)
        return [AdminState.refresh_all]

    @rx.event(background=True)
    async def refresh_all(self) -> None:
        async with self:
            if await self._admin("page") is None:
                return
            args = (self.search, self.plan_filter, self.status_filter, self.sort, self.page,
                    self.usage_filter)  # fmt: skip
            inv_args = (self.invoice_status, self.invoice_page, self.invoice_user_id)
            loads = {part: start_load(self, part) for part in (USERS, INVOICES, KEYS)}
        try:
            read_at = utcnow()
            users = await in_thread(lambda: load_users(*args))
            stats = await in_thread(load_stats)
            invs = await in_thread(lambda: load_invoices(*inv_args))
            keys = await in_thread(load_keys)
        except BillingError as err:
            async with self:
                # Nothing applied: what shows stays whole, under the message.
                if any(is_newest(self, part, n) for part, n in loads.items()):
                    self._show_error("page", err)
                self.loaded = True
            return
        async with self:
            # A part loaded again meanwhile (a search, a filter, a page, a new key) shows
            # that newer answer, now or when it comes.
            shown = ["page"]
            if is_newest(self, USERS, loads[USERS]):
                self._set_users(users)
                self._set_stats(stats, read_at)
                shown.append("users")
            if is_newest(self, INVOICES, loads[INVOICES]):
                self._set_invoices(invs)
                shown.append("invoices")
            if is_newest(self, KEYS, loads[KEYS]):
                self.keys = keys
            self._clear_error(*shown)
            self.loaded = True

    def _set_stats(self, stats: list[views.StatView], read_at: Any) -> None:
        self.stats = stats
        self.as_of = f"As of {read_at:%H:%M} UTC"
        self.as_of_title = f"Figures read {fmt.date_time(read_at)}"

    def _set_users(self, data: dict[str, Any]) -> None:
        self.users = data["rows"]
        self.total = data["total"]
        self.page = self._page_shown = data["page"]
        self.pages = data["pages"]

    def _set_invoices(self, data: dict[str, Any]) -> None:
        self.invoices = data["rows"]
        self.invoice_total = data["total"]
        self.invoice_page = self._invoice_page_shown = data["page"]
        self.invoice_pages = data["pages"]

    def _show_error(self, part: str, err: BillingError) -> None:
        """`err`'s message where the page shows `part`'s: the user drawer's ("drawer") and
        the API keys tab's ("keys") own messages; else the console's, which the part's
        next good load ("page", "users", "invoices") takes away."""
        if part == "drawer":
            self.override_error = err.message
            self.detail_loading = False  # the drawer shows its message, not a placeholder
        elif part == "keys":
            self.key_error = err.message
        else:
            self.error = err.message
            self._error_of = part
            # The pager tells of the rows still shown, so Next asks for the next of them.
            if part in ("page", "users"):
                self.page = self._page_shown
            if part in ("page", "invoices"):
                self.invoice_page = self._invoice_page_shown

    def _clear_error(self, *parts: str) -> None:
        if self._error_of in parts:
            self.error = self._error_of = ""

    @rx.event(background=True)
    async def reload_users(self) -> None:
        # Typing in the search box, each filter and each page send one: answers come back
        # in any order, and only the newest load's is shown.
        async with self:
            if await self._admin("users") is None:
                return
            args = (self.search, self.plan_filter, self.status_filter, self.sort, self.page,
                    self.usage_filter)  # fmt: skip
            load = start_load(self, USERS)
        try:
            read_at = utcnow()
            users = await in_thread(lambda: load_users(*args))
            # With the list, so the counts above it are of the same moment.
            stats = await in_thread(load_stats)
        except BillingError as err:
            async with self:
                if is_newest(self, USERS, load):
                    self._show_error("users", err)
            return
        async with self:
            if is_newest(self, USERS, load):
                self._set_users(users)
                self._set_stats(stats, read_at)
                self._clear_error("users")

    @rx.event(background=True)
    async def reload_invoices(self) -> None:
        async with self:
            if await self._admin("invoices") is None:
                return
            args = (self.invoice_status, self.invoice_page, self.invoice_user_id)
            load = start_load(self, INVOICES)
        try:
            invs = await in_thread(lambda: load_invoices(*args))
        except BillingError as err:
            async with self:
                if is_newest(self, INVOICES, load):
                    self._show_error("invoices", err)
            return
        async with self:
            if is_newest(self, INVOICES, load):
                self._set_invoices(invs)
                self._clear_error("invoices")

    # ------------------------------------------------------------ tabs

    @rx.event
    def set_tab(self, value: str) -> None:
        """The tabs' own switch; the cards' "List them" and the drawer's "All invoices"
        switch with their filter, in one event (_show_tab)."""
        self._show_tab(value)

    def _show_tab(self, value: Any) -> None:
        if value in TABS:  # a crafted event's other value changes nothing
            self.tab = value

    # ------------------------------------------------------------ users table

    @rx.event
    def set_search(self, value: str) -> Any:
        self.search = clip(value, SEARCH_MAX)
        self.page = 1
        return AdminState.reload_users

    @rx.event
    def set_plan_filter(self, value: str) -> Any:
        self.plan_filter = value if value in PLAN_KEYS else ALL
        self.page = 1
        return AdminState.reload_users

    @rx.event
    def set_status_filter(self, value: str) -> Any:
        self.status_filter = value if value in STATUSES else ALL
        self.page = 1
        return AdminState.reload_users

    @rx.event
    def set_usage_filter(self, value: str) -> Any:
        self.usage_filter = value if value in USAGE else ALL
        self.page = 1
        return AdminState.reload_users

    @rx.event
    def set_sort(self, value: str) -> Any:
        self.sort = value if value in SORTS else "-created"
        self.page = 1
        return AdminState.reload_users

    @rx.event
    def clear_filters(self) -> Any:
        """Every user again: no search, no plan, status or usage filter (the sort stays)."""
        self.search = ""
        self.plan_filter = self.status_filter = self.usage_filter = ALL
        self.page = 1
        # The search box is uncontrolled: emptied in the browser too. The button goes
        # with the filters, so the keyboard goes to the search box.
        return [rx.set_value(SEARCH_ID, ""), rx.set_focus(SEARCH_ID), AdminState.reload_users]

    @rx.event
    def show_past_due(self) -> Any:
        """The Past due card's "List them": the users its number counts, and only them."""
        self.search = ""
        self.plan_filter = self.usage_filter = ALL
        self.status_filter = "past_due"
        self.page = 1
        self._show_tab("users")
        return [rx.set_value(SEARCH_ID, ""), AdminState.reload_users]

    @rx.event
    def next_page(self) -> Any:
        if self.page < self.pages:
            self.page += 1
            return AdminState.reload_users
        return None

    @rx.event
    def prev_page(self) -> Any:
        if self.page > 1:
            self.page -= 1
            return AdminState.reload_users
        return None

    # ------------------------------------------------------------ invoices

    @rx.event
    def set_invoice_status(self, value: str) -> Any:
        self.invoice_status = value if value in INVOICE_STATUSES else ALL
        self.invoice_page = 1
        return AdminState.reload_invoices

    @rx.event
    def show_user_invoices(self) -> Any:
        """The drawer's "All invoices": the Invoices tab narrowed to the drawer's user
        (all statuses, first page), the drawer closed; focus goes to the filter's chip
        (page's _FOCUS_OPENER)."""
        if not self.detail_id:
            return None
        self.invoice_user_id = self.detail_id
        self.invoice_user_email = self.detail_email
        self.invoice_status = ALL
        self.invoice_page = 1
        self.drawer_opener = CUSTOMER_FILTER
        self.drawer_open = False
        self._show_tab("invoices")
        return AdminState.reload_invoices

    @rx.event
    def show_failed_payments(self) -> Any:
        """The Failed payments card's "List them": every customer's, as the card counts."""
        self.invoice_status = "failed"
        self.invoice_user_id = 0
        self.invoice_user_email = ""
        self.invoice_page = 1
        self._show_tab("invoices")
        return AdminState.reload_invoices

    @rx.event
    def clear_invoice_user(self) -> Any:
        """The chip's remove button: every customer's invoices again. The chip goes with
        its button, so the keyboard goes to the status filter beside it."""
        if not self.invoice_user_id:
            return None
        self.invoice_user_id = 0
        self.invoice_user_email = ""
        self.invoice_page = 1
        return [AdminState.reload_invoices, rx.set_focus(INVOICE_FILTER_ID)]

    @rx.event
    def next_invoices(self) -> Any:
        if self.invoice_page < self.invoice_pages:
            self.invoice_page += 1
            return AdminState.reload_invoices
        return None

    @rx.event
    def prev_invoices(self) -> Any:
        if self.invoice_page > 1:
            self.invoice_page -= 1
            return AdminState.reload_invoices
        return None

    # ------------------------------------------------------------ user drawer

    @rx.event
    async def open_user(self, user_id: int, opener: str = "details") -> Any:
        """The drawer for `user_id`, from the row's Details button or (`opener="email"`)
        its email, or (`opener="invoice-<id>"`) the customer of an invoice in the
        Invoices tab; each with CARD before it from a phone's card."""
        if await self._admin("users") is None:
            return None
        user_id = int(user_id)
        opener = str(opener)
        # The phone's cards (CARD-prefixed) have their own buttons: a row's twin in the
        # hidden table must not take the focus back.
        card = CARD if opener.startswith(CARD) else ""
        opener = opener.removeprefix(CARD)
        if opener.startswith("invoice-"):
            self.drawer_opener = card + opener[:80]  # that invoice's button gets focus back
        else:
            kind = "email" if opener == "email" else "details"
            self.drawer_opener = f"{card}{kind}-{user_id}"
        if user_id != self.detail_id:
            # Nothing of the previous user's under this one's name while the detail loads;
            # the list's row (of users, or of invoices) gives the email at once.
            row = next((u for u in self.users if u.id == user_id), None)
            invoice = next((i for i in self.invoices if i.user_id == user_id), None)
            self._clear_detail()
            if row is not None:
                self.detail_email, self.detail_name = row.email, row.display_name
            elif invoice is not None:
                self.detail_email = invoice.user_email
            self.detail_loading = True
        self.detail_id = user_id
        self.override_error = ""
        self.override_saved = ""
        self.override_limit = ""
        self.override_reason = ""
        self.drawer_open = True
        return AdminState.load_detail

    def _clear_detail(self) -> None:
        self.detail_email = self.detail_name = self.detail_role = ""
        self.detail_sub = views.AdminSubscriptionView()
        self.detail_invoices = []
        self.detail_meters = []
        self.detail_quotas = []
        self.detail_audit = []

    @rx.event
    def set_drawer_open(self, value: bool) -> None:
        self.drawer_open = value is True

    @rx.event
    def close_drawer(self) -> None:
        self.drawer_open = False

    @rx.event(background=True)
    async def load_detail(self) -> Any:
        """The drawer's user, read now; a list behind it that says otherwise of that user
        (read before a webhook landed, or before the drawer's own change) is read again,
        only that one, so it agrees with the drawer when it closes."""
        async with self:
            if await self._admin("drawer") is None:
                return None
            user_id = self.detail_id
            load = start_load(self, DETAIL)
        try:
            data = await in_thread(lambda: load_detail(user_id))
        except BillingError as err:
            async with self:
                if user_id == self.detail_id and is_newest(self, DETAIL, load):
                    self.override_error = err.message
                    self.detail_loading = False
            return None
        async with self:
            # A late answer, for a user opened before or from an older load, is dropped.
            if data["id"] != self.detail_id or not is_newest(self, DETAIL, load):
                return None
            self.detail_email = data["email"]
            self.detail_name = data["name"]
            self.detail_role = data["role"]
            self.detail_sub = data["subscription"]
            self.detail_invoices = data["invoices"]
            self.detail_meters = data["meters"]
            self.detail_quotas = data["quotas"]
            self.detail_audit = data["audit"]
            self.detail_loading = False
            narrowed = (self.invoice_user_id, self.invoice_status, self.invoice_page) == (
                data["id"],
                ALL,
                1,
            )
            users_stale, invoices_stale = stale_lists(data, self.users, self.invoices, narrowed)
        return [
            *([AdminState.reload_users] if users_stale else []),
            *([AdminState.reload_invoices] if invoices_stale else []),
        ] or None

    @rx.event
    def set_override_metric(self, value: str) -> None:
        if value in METRICS:
            self.override_metric = value

    @rx.event
    def set_override_limit(self, value: str) -> None:
        self.override_limit = clip(value, LIMIT_MAX)

    @rx.event
    def set_override_reason(self, value: str) -> None:
        self.override_reason = clip(value, REASON_MAX)

    @rx.event
    async def save_override(self) -> Any:
        return await self._override(clear=False)

    @rx.event
    async def submit_override(self, _form: dict[str, Any]) -> Any:
        """Enter in the override form: what Save override does (the fields are state)."""
        return await self._override(clear=False)

    @rx.event
    async def clear_override(self) -> Any:
        return await self._override(clear=True)

    async def _override(self, clear: bool) -> Any:
        if not clear and self.override_saved and not self.override_limit.strip():
            # A second Enter (or click) queued behind the save, which emptied the form.
            return None
        self.override_error = self.override_saved = ""
        admin = await self._admin("drawer")
        if admin is None:
            return None
        limit: int | None = None
        if not clear:
            text = self.override_limit.replace(",", "").replace("_", "").strip()
            if text.lower() in ("unlimited", "∞"):
                text = "0"
            if not text.isdecimal():  # isdigit() also takes "²" and "①", which int() refuses
                self.override_error = "Enter a whole number (0 means unlimited)."
                return None
            limit = int(text)
        user_id, metric, reason = self.detail_id, self.override_metric, self.override_reason
        actor = admin.id

        def save() -> None:
            # May wait for another admin's save of the same quota row (its lock).
            with outage_as_error(), session_scope() as session:
                quotas.set_override(session, user_id, metric, limit, reason, actor_user_id=actor)

        try:
            await in_thread(save)
        except BillingError as err:
            self.override_error = err.message
            return None
        label = METRICS[self.override_metric].label
        self.override_saved = (
            f"{label} limit reset to the plan." if clear else f"{label} limit saved."
        )
        self.override_sent = self._took(self.override_sent, OVERRIDE_FIELDS)
        return [AdminState.load_detail, AdminState.reload_users]

    def _took(self, sent: views.SavedFields, fields: dict[str, str]) -> views.SavedFields:
        """After a save: what it took from `fields` (for the page), and the fields emptied.
        A key typed after the Enter comes in after this and sets its field again."""
        texts = {field_id: getattr(self, var) for field_id, var in fields.items()}
        for var in fields.values():
            setattr(self, var, "")
        return views.SavedFields(seq=sent.seq + 1, pending=True, texts=texts)

    def _settled(self, sent: views.SavedFields, fields: dict[str, str]) -> views.SavedFields:
        """The page emptied each box that still held what the save took: so does the state
        (a box typed on after the Enter and back to that same text)."""
        if sent.pending:
            for field_id, var in fields.items():
                if getattr(self, var) == sent.texts.get(field_id):
                    setattr(self, var, "")
        return views.SavedFields(seq=sent.seq)

    @rx.event
    def settle_override(self) -> None:
        self.override_sent = self._settled(self.override_sent, OVERRIDE_FIELDS)

    # ------------------------------------------------------------ API keys

    @rx.event
    def set_key_name(self, value: str) -> None:
        self.key_name = clip(value, KEY_NAME_MAX)

    @rx.event
    def set_key_service(self, value: str) -> None:
        self.key_service = clip(value, KEY_NAME_MAX)

    @rx.event
    def set_key_access(self, value: str) -> None:
        if value in _KEY_SCOPES:  # a crafted event's other value changes nothing
            self.key_access = value

    @rx.event
    async def create_key(self) -> Any:
        return await self._create_key()

    async def _create_key(self) -> Any:
        if await self._admin("keys") is None:
            return None
        self.key_error = ""
        name = self.key_name
        service = self.key_service.strip() or name.strip()
        scopes = _KEY_SCOPES.get(self.key_access, _KEY_SCOPES[KEY_ACCESS[0][0]])
        try:
            key_id, secret, keys = await in_thread(
                lambda: create_and_list_keys(name, service, scopes)
            )
        except BillingError as err:
            self.key_error = err.message
            return None
        self.keys = keys
        start_load(self, KEYS)  # a page load's older list, still on its way, is dropped
        # Shown once; it lives only in this tab's state until dismissed or the page reloads.
        self.new_secret = secret
        self._new_key_id = key_id
        self.curl_example = curl_example(self.router.url.origin, secret, "usage:write" in scopes)
        self.key_sent = self._took(self.key_sent, KEY_FIELDS)
        return None

    @rx.event
    def settle_key(self) -> None:
        self.key_sent = self._settled(self.key_sent, KEY_FIELDS)

    @rx.event
    async def submit_key(self, _form: dict[str, Any]) -> Any:
        """Enter in the new key's fields: what Create key does (the fields are state)."""
        return await self._create_key()

    @rx.event
    def dismiss_secret(self) -> Any:
        self._dismiss_secret()
        # Done goes with the callout: keep the keyboard in the panel, not back at the top.
        return rx.set_focus("key-name")

    def _dismiss_secret(self) -> None:
        self.new_secret = self.curl_example = ""
        self._new_key_id = 0

    @rx.event
    async def revoke_key(self, key_id: int) -> Any:
        if await self._admin("keys") is None:
            return None
        self.key_error = ""  # a previous failure's message goes, as when creating a key
        key_id = int(key_id)
        try:
            self.keys = await in_thread(lambda: revoke_and_list_keys(key_id))
        except BillingError as err:
            self.key_error = err.message
            return None
        start_load(self, KEYS)
        if key_id == self._new_key_id:  # its secret no longer works: not shown as if it did
            self._dismiss_secret()
        # The Revoke button the dialog would give focus back to is gone (a badge now):
        # keep the keyboard in the panel rather than back at the top of the document.
        return rx.set_focus("key-name")
