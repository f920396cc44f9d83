"""/admin/billing: the operator console (the seed's BillingAdmin). Non-admins get a 403."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import reflex as rx
from reflex.experimental.client_state import ClientStateVar

from billing_app.components.common import (
    ONE_LINE,
    card,
    data_table,
    empty,
    invoice_item,
    invoice_table,
    list_item,
    load_error,
    meter,
    pager,
    scroll_x,
    section_title,
    select,
    sr_only,
    status_badge,
    status_page,
    table_or_list,
)
from billing_app.components.layout import loading, page
from billing_app.states.admin import (
    CARD,
    CUSTOMER_FILTER,
    INVOICE_FILTER_ID,
    KEY_ACCESS,
    KEY_FIELDS,
    KEY_NAME_MAX,
    LIMIT_MAX,
    OVERRIDE_FIELDS,
    REASON_MAX,
    SEARCH_ID,
    SEARCH_MAX,
)
from billing_app.states.admin import AdminState as A
from billing_app.states.views import (
    AdminUserView,
    ApiKeyView,
    AuditView,
    InvoiceView,
    MeterView,
    QuotaView,
    StatView,
)


def forbidden() -> rx.Component:
    return status_page(
        "403",
        "You don't have access to this page",
        "The billing console is for administrators. Ask an admin to grant you access.",
        "forbidden",
    )


def stat_card(s: StatView) -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.text(s.label, size="2", color_scheme="gray"),
            # Two cards a row on a phone: MRR's "$2,986.00" at size 7 ran past its card's
            # edge, cut off. Smaller there, and a longer amount wraps rather than hides.
            rx.text(
                s.value,
                size=rx.breakpoints(initial="5", sm="7"),
                weight="bold",
                overflow_wrap="anywhere",
                class_name="stat-value",
            ),
            # Says what is counted, so the cards read as one definition.
            rx.cond(s.hint != "", rx.text(s.hint, size="1", color_scheme="gray")),
            rx.cond(
                s.action == "past_due",
                _list_them(s, A.show_past_due),
                rx.cond(
                    s.action == "failed",
                    _list_them(s, A.show_failed_payments),
                ),
            ),
            spacing="1",
        ),
        size="2",
        width="100%",
    )


def _list_them(s: StatView, on_click: Any) -> rx.Component:
    """A card's way to the list of what it counts (a tab and its filter)."""
    return rx.button(
        "List them",
        rx.icon("arrow-right", size=14),
        on_click=on_click,
        variant="ghost",
        size="1",
        aria_label="List them: " + s.label.lower(),  # the visible words first (axe)
        class_name="stat-action",
        margin_top="4px",
    )


def export_link(href: rx.Var, rows: str) -> rx.Component:
    """A plain link to a CSV export carrying the current filters; the session cookie
    signs it. A document request (not the client-side router's), so the browser saves
    the attachment and the console stays."""
    return rx.link(
        rx.icon("download", size=16),
        "Export CSV",
        href=href,
        reload_document=True,
        title=f"Download every {rows} matching the filters as a CSV file",
        size="2",
        weight="medium",
        display="inline-flex",
        align_items="center",
        gap="6px",
        white_space="nowrap",
    )


# What each console form box holds, kept in the browser as it is typed: a save's answer
# empties a box only if it still holds what the save took (clear_saved), decided there
# when the answer arrives, so text typed after the Enter meanwhile stays.
TYPED = {
    field_id: ClientStateVar.create("typed_" + field_id.replace("-", "_"), default="")
    for field_id in (*OVERRIDE_FIELDS, *KEY_FIELDS)
}


def form_field_props(
    name: str, value: rx.Var, setter: rx.EventHandler, max_length: int
) -> dict[str, object]:
    """A form field that starts from the state's `value` and tells the state each key.
    Uncontrolled: a state's value on the field (`value=`) put an older text back when the
    server's answer to earlier keys came in after later ones. Not debounced, so an Enter
    or a click right after the last key reaches the state behind it. `max_length`: what
    the state keeps, so the box never shows more. `name` and `id`: the form's control
    (Reflex 0.10.1 deprecates submitting one by its id) and the handle to clear it; its
    text is also kept in TYPED[name]."""
    typed = TYPED[name]
    return {"name": name, "id": name, "default_value": value,
            "on_change": [setter, typed.set], "on_mount": typed.set_value(value),
            "max_length": max_length}  # fmt: skip


def clear_saved(sent: rx.Var, fields: Iterable[str], settle: rx.EventHandler) -> rx.Component:
    """When a form's save answers (`sent`, views.SavedFields): empties each of its boxes
    (`fields`, their ids) that still holds what the save took, and tells the state
    (`settle`). A box typed on after the Enter keeps its text, which its keys have given
    the state."""
    return rx.cond(
        sent.pending,
        rx.fragment(
            # A new save's answer mounts it anew (on_mount: the moment the answer shows).
            key=sent.seq.to_string(),
            on_mount=[
                *(
                    rx.cond(TYPED[f].value == sent.texts[f], rx.set_value(f, ""), rx.noop())
                    for f in fields
                ),
                settle,
            ],
        ),
    )


def users_toolbar() -> rx.Component:
    return rx.flex(
        rx.input(
            rx.input.slot(rx.icon("search", size=16)),
            placeholder="Search by email, or @domain",
            # Uncontrolled: a late answer from the server never puts an older search
            # back while more is typed. It starts from the state's search, so the box
            # says what the list is filtered by when the page is opened again.
            default_value=A.search,
            on_change=A.set_search.debounce(300),
            max_length=SEARCH_MAX,
            size="2",
            flex="1",
            min_width="200px",
            aria_label="Search users",
            id=SEARCH_ID,
        ),
        select(A.plan_options, A.plan_filter, A.set_plan_filter, "Filter by plan", name="plan"),
        select(
            A.status_options,
            A.status_filter,
            A.set_status_filter,
            "Filter by status",
            name="status",
        ),
        select(
            A.usage_options, A.usage_filter, A.set_usage_filter, "Filter by usage", name="usage"
        ),
        select(A.sort_options, A.sort, A.set_sort, "Sort", name="sort"),
        rx.cond(
            A.users_filtered,
            rx.button(
                rx.icon("x", size=16),
                "Clear filters",
                on_click=A.clear_filters,
                variant="ghost",
                size="2",
                id="clear-filters",
            ),
        ),
        export_link(A.users_csv_href, "user"),
        spacing="2",
        align="center",
        wrap="wrap",
        width="100%",
    )


# The row's button that opened the user drawer carries this id, and closing the drawer
# gives it the focus back. Reflex 0.10 keeps a ref (what rx.set_focus reaches) only for
# a static id, and a foreach row's own id is a Var: so the static one is the opener's.
# (A drawer root per row, its buttons Triggers, closed the drawer when the row left the
# list.) A phone's cards have their own: each foreach sets the page's one ref of an id
# as it renders, so the cards' (rendered after the table) took the table's away.
OPENER_ID, CARD_OPENER_ID = "drawer-opener", "drawer-opener-card"


def _drawer_opener(
    key: str | rx.Var, button: Callable[[str | rx.Var], rx.Component], card: bool = False
) -> rx.Component:
    """A button that opens the drawer (`key`: which one, as open_user records it, without
    CARD), built by `button(id)`. Both branches are the same element, so React keeps the
    button (and its focus) as the id changes. `card`: on a phone's card. The table's and
    the card's twins both take their ids when either opened the drawer: narrowing or
    widening the window past 62em meanwhile hides the one clicked (_FOCUS_OPENER)."""
    opener_id = CARD_OPENER_ID if card else OPENER_ID
    own_id = CARD + key if card else key
    return rx.cond(A.opener_key == key, button(opener_id), button(own_id))


def _email_opener(
    email: rx.Var,
    user_id: rx.Var,
    key: str | rx.Var,
    opener: str | rx.Var,
    card: bool = False,
    **props: Any,
) -> rx.Component:
    """A user's email that opens their drawer (`opener`: what open_user records, "email" or
    the invoice's, `key` without CARD). A long email wraps, anywhere, within 260px (its
    line on a phone's card, `card`): cut short with an ellipsis, only a mouse could read
    the rest (the title), and on one line it pushed a table's last columns out of sight."""

    def button(id_: str | rx.Var) -> rx.Component:
        return rx.button(
            rx.text(
                email,
                max_width="100%" if card else "260px",
                overflow_wrap="anywhere",
                text_align="left",
                **props,
            ),
            on_click=A.open_user(user_id, opener),
            title=email,
            variant="ghost",
            color_scheme="gray",
            high_contrast=True,
            size="2",
            # Radix's fixed button height would let a wrapped second line spill out.
            height="auto",
            min_height="var(--base-button-height)",
            padding_y="2px",
            id=id_,
            **({"max_width": "100%"} if card else {}),
        )

    return _drawer_opener(key, button, card)


def invoice_customer(inv: InvoiceView, card: bool = False) -> rx.Component:
    """An invoice's customer in the Invoices tab: their email, which opens their drawer
    (plan, usage, quotas), as the users list's email does. `card`: on a phone's card."""
    key = "invoice-" + inv.id
    return _email_opener(inv.user_email, inv.user_id, key, (CARD if card else "") + key, card=card)


def _details_button(u: AdminUserView, card: bool = False) -> rx.Component:
    """The row's Details button, which opens the user's drawer."""
    opener = CARD + "details" if card else "details"
    return _drawer_opener(
        "details-" + u.id.to_string(),
        lambda id_: rx.button(
            "Details",
            on_click=A.open_user(u.id, opener),
            variant="soft",
            size="2" if card else "1",
            aria_label="Details for " + u.email,
            id=id_,
        ),
        card,
    )


def _owed(u: AdminUserView) -> rx.Component:
    """What the user still owes on failed payments ("$49.00 owed"), under their status."""
    return rx.cond(
        u.owed_text != "",
        rx.text(
            u.owed_text,
            size="1",
            weight="medium",
            color=rx.color("red", 11),
            white_space="nowrap",
            class_name="owed",
        ),
    )


def user_row(u: AdminUserView) -> rx.Component:
    return rx.table.row(
        rx.table.row_header_cell(
            rx.vstack(
                rx.hstack(
                    # The email opens the drawer too: on a phone the Details column is
                    # far off to the right of a sideways-scrolling table.
                    _email_opener(
                        u.email, u.id, "email-" + u.id.to_string(), "email", weight="medium"
                    ),
                    rx.cond(u.role == "admin", rx.badge("Admin", size="1", variant="outline")),
                    align="center",
                    spacing="2",
                ),
                rx.text(u.display_name, size="1", color_scheme="gray"),
                spacing="0",
            )
        ),
        rx.table.cell(rx.text(u.plan_name, white_space="nowrap")),
        rx.table.cell(
            rx.vstack(
                status_badge(u.status_label, u.status_color),
                rx.cond(
                    u.ends_text != "",
                    rx.text(u.ends_text, size="1", color_scheme="gray", white_space="nowrap"),
                ),
                _owed(u),
                spacing="1",
            )
        ),
        rx.table.cell(
            rx.vstack(rx.foreach(u.meters, lambda m: meter(m, compact=True)), spacing="2"),
            min_width="220px",
        ),
        rx.table.cell(rx.text(u.created, white_space="nowrap", color_scheme="gray")),
        rx.table.cell(_details_button(u)),
        align="center",
        custom_attrs={"data-email": u.email},
    )


def user_item(u: AdminUserView) -> rx.Component:
    """One user on a phone: the table's row stacked (its six columns scrolled sideways,
    the status, meters and Details out of sight behind the email)."""
    return list_item(
        rx.vstack(
            rx.hstack(
                _email_opener(
                    u.email,
                    u.id,
                    "email-" + u.id.to_string(),
                    CARD + "email",
                    card=True,
                    weight="medium",
                ),
                rx.cond(u.role == "admin", rx.badge("Admin", size="1", variant="outline")),
                align="center",
                spacing="2",
                max_width="100%",
            ),
            rx.cond(u.display_name != "", rx.text(u.display_name, size="1", color_scheme="gray")),
            rx.hstack(
                rx.hstack(
                    rx.text(u.plan_name, weight="medium"),
                    status_badge(u.status_label, u.status_color),
                    rx.cond(u.ends_text != "", rx.text(u.ends_text, size="1", color_scheme="gray")),
                    _owed(u),
                    align="center",
                    spacing="2",
                    wrap="wrap",
                ),
                _details_button(u, card=True),
                justify="between",
                align="center",
                width="100%",
            ),
            rx.vstack(
                rx.foreach(u.meters, lambda m: meter(m, compact=True)), spacing="2", width="100%"
            ),
            rx.text("Joined ", u.created, size="1", color_scheme="gray"),
            spacing="2",
            width="100%",
        ),
        custom_attrs={"data-email": u.email},
    )


def users_panel() -> rx.Component:
    return card(
        users_toolbar(),
        rx.cond(
            A.total > 0,
            table_or_list(
                data_table(
                    ("User", "Plan", "Status", "Usage", "Joined", sr_only("Actions")),
                    A.users,
                    user_row,
                    "users-table",
                ),
                A.users,
                user_item,
                "users-list",
                "Users",
            ),
            empty("users", "No users match", "Try another search or clear the filters."),
        ),
        pager(A.page_text, A.page, A.pages, A.prev_page, A.next_page, "users"),
    )


def customer_chip() -> rx.Component:
    """Says the Invoices tab lists one customer's invoices only, with a button to list
    everyone's again. Focused when the drawer's "All invoices" opens the tab (tab_index
    -1: reachable by script, not a Tab stop of its own), so a screen reader reads it."""
    return rx.badge(
        rx.text("Customer: ", rx.text.strong(A.invoice_user_email), **ONE_LINE),
        rx.icon_button(
            rx.icon("x", size=12),
            on_click=A.clear_invoice_user,
            variant="ghost",
            color_scheme="gray",
            size="1",
            aria_label="Remove the customer filter: show every customer's invoices",
            title="Show every customer's invoices",
            id="clear-customer-filter",
        ),
        id=CUSTOMER_FILTER,
        role="group",
        aria_label="Invoices of customer " + A.invoice_user_email,
        tab_index=-1,
        # A badge draws no focus ring of its own: the keyboard's place must show.
        _focus_visible={"outline": "2px solid var(--focus-8)", "outline_offset": "2px"},
        size="2",
        variant="surface",
        max_width="100%",
        display="inline-flex",
        align_items="center",
        gap="6px",
    )


def invoices_panel() -> rx.Component:
    return card(
        rx.hstack(
            # Not "All invoices": the filters beside it often narrow the list.
            rx.heading("Invoices", size="4", as_="h2"),
            rx.hstack(
                rx.cond(A.invoice_user_id != 0, customer_chip()),
                select(
                    A.invoice_status_options,
                    A.invoice_status,
                    A.set_invoice_status,
                    "Filter invoices by status",
                    name="invoice_status",
                    trigger_id=INVOICE_FILTER_ID,
                ),
                export_link(A.invoices_csv_href, "invoice"),
                spacing="3",
                align="center",
                wrap="wrap",
            ),
            justify="between",
            align="center",
            width="100%",
            wrap="wrap",
        ),
        rx.cond(
            A.invoice_total > 0,
            table_or_list(
                invoice_table(A.invoices, "admin-invoices-table", customer=invoice_customer),
                A.invoices,
                lambda inv: invoice_item(inv, customer=lambda i: invoice_customer(i, card=True)),
                "admin-invoices-list",
                "Invoices",
            ),
            empty("receipt", "No invoices", "Nothing matches this filter."),
        ),
        pager(
            A.invoice_page_text,
            A.invoice_page,
            A.invoice_pages,
            A.prev_invoices,
            A.next_invoices,
            "invoices",
        ),
    )


def revoke_control(k: ApiKeyView, size: str = "1") -> rx.Component:
    """A key's Revoke button (asks first), or its Revoked badge."""
    return rx.cond(
        k.revoked,
        rx.badge("Revoked", color_scheme="gray"),
        rx.alert_dialog.root(
            rx.alert_dialog.trigger(
                rx.button(
                    "Revoke",
                    color_scheme="red",
                    variant="soft",
                    size=size,
                    aria_label="Revoke key " + k.name,
                )
            ),
            rx.alert_dialog.content(
                rx.alert_dialog.title(k.revoke_question),
                rx.alert_dialog.description(
                    "Services using it stop working immediately. This cannot be undone."
                ),
                rx.hstack(
                    rx.alert_dialog.cancel(
                        rx.button("Cancel", variant="soft", color_scheme="gray")
                    ),
                    rx.alert_dialog.action(
                        rx.button(
                            "Revoke key",
                            color_scheme="red",
                            # white on red 9 is 3.9:1, under WCAG's 4.5:1
                            high_contrast=True,
                            on_click=A.revoke_key(k.id),
                        )
                    ),
                    justify="end",
                    spacing="3",
                    margin_top="16px",
                ),
            ),
        ),
    )


def key_row(k: ApiKeyView) -> rx.Component:
    return rx.table.row(
        rx.table.row_header_cell(rx.text(k.name, weight="medium")),
        rx.table.cell(rx.code(k.prefix)),
        rx.table.cell(k.owner),
        rx.table.cell(k.access),
        rx.table.cell(rx.text(k.created, white_space="nowrap")),
        rx.table.cell(rx.text(k.last_used, white_space="nowrap")),
        rx.table.cell(revoke_control(k)),
        align="center",
    )


def key_item(k: ApiKeyView) -> rx.Component:
    """One key on a phone: the table's seven columns put Revoke far off to the right."""
    return list_item(
        rx.vstack(
            rx.hstack(
                rx.vstack(
                    rx.text(k.name, weight="medium", overflow_wrap="anywhere"),
                    rx.code(k.prefix, size="1"),
                    spacing="1",
                    min_width="0",
                ),
                revoke_control(k, size="2"),
                justify="between",
                align="start",
                width="100%",
            ),
            rx.text(k.owner, " · ", k.access, size="2", overflow_wrap="anywhere"),
            rx.text(
                "Created ", k.created, " · Last used ", k.last_used, size="1", color_scheme="gray"
            ),
            spacing="1",
            width="100%",
        ),
    )


def new_secret_callout() -> rx.Component:
    return rx.cond(
        A.new_secret != "",
        rx.callout.root(
            rx.callout.icon(rx.icon("key-round")),
            rx.vstack(
                rx.callout.text(
                    rx.text.strong("Copy this key now. "),
                    "It will not be shown again.",
                ),
                rx.hstack(
                    rx.code(A.new_secret, id="new-secret", word_break="break-all"),
                    rx.icon_button(
                        rx.icon("copy", size=14),
                        on_click=rx.set_clipboard(A.new_secret),
                        variant="soft",
                        size="1",
                        aria_label="Copy key",
                    ),
                    align="center",
                    wrap="wrap",
                ),
                rx.el.pre(
                    A.curl_example,
                    id="curl-example",
                    style={
                        "whiteSpace": "pre-wrap",
                        "wordBreak": "break-all",
                        "fontSize": "12px",
                        "padding": "12px",
                        "borderRadius": "8px",
                        "background": "var(--gray-a3)",
                        "width": "100%",
                        "margin": "0",
                    },
                ),
                rx.button("Done", on_click=A.dismiss_secret, size="1", variant="soft"),
                spacing="2",
                width="100%",
            ),
            color_scheme="grass",
            width="100%",
        ),
    )


def keys_panel() -> rx.Component:
    return card(
        section_title("API keys", "Services use these to post usage and check quotas.", level="h2"),
        rx.form(
            rx.flex(
                rx.box(
                    typed_field(
                        "Key name",
                        "",
                        "key-name",
                        A.key_name,
                        A.set_key_name,
                        KEY_NAME_MAX,
                        placeholder="e.g. scraper-prod",
                    ),
                    flex="1",
                    min_width="180px",
                ),
                rx.box(
                    typed_field(
                        "Service",
                        "Optional; the key's name if left empty.",
                        "key-service",
                        A.key_service,
                        A.set_key_service,
                        KEY_NAME_MAX,
                    ),
                    flex="1",
                    min_width="160px",
                ),
                rx.box(
                    labelled(
                        "Access",
                        "",
                        rx.select.root(
                            rx.select.trigger(aria_label="Access", min_width="200px"),
                            rx.select.content(
                                *[rx.select.item(label, value=v) for v, label, _ in KEY_ACCESS]
                            ),
                            value=A.key_access,
                            on_change=A.set_key_access,
                        ),
                    ),
                    flex="0 0 auto",
                ),
                # Level with the fields: below the height of their labels (a size-2
                # line and the vstack's space-1 gap).
                rx.button(
                    rx.icon("plus", size=16),
                    "Create key",
                    type="submit",
                    margin_top="calc(var(--line-height-2) + var(--space-1))",
                ),
                gap="8px",
                wrap="wrap",
                # Tops, not bottoms: the Service hint under its box lifted it above the
                # other fields.
                align="start",
                width="100%",
            ),
            on_submit=A.submit_key,
            width="100%",
        ),
        rx.cond(
            A.key_error != "",
            rx.callout(A.key_error, icon="circle-alert", color_scheme="red", width="100%"),
        ),
        new_secret_callout(),
        table_or_list(
            data_table(
                ("Name", "Prefix", "Service", "Access", "Created", "Last used", sr_only("Actions")),
                A.keys,
                key_row,
                "keys-table",
            ),
            A.keys,
            key_item,
            "keys-list",
            "API keys",
        ),
    )


def drawer_meter(m: MeterView) -> rx.Component:
    """A meter with when it resets ("Resets on Jan 1, 2027"): a plan that resets on its
    billing period resets on its own day, not the first of the month."""
    return rx.vstack(
        meter(m),
        rx.cond(m.resets_text != "", rx.text(m.resets_text, size="1", color_scheme="gray")),
        spacing="1",
        width="100%",
    )


def quota_row(q: QuotaView) -> rx.Component:
    return rx.table.row(
        rx.table.row_header_cell(q.label),
        rx.table.cell(rx.text(q.limit_text, weight="medium")),
        rx.table.cell(q.plan_limit_text),
        rx.table.cell(
            rx.cond(
                q.source == "admin",
                rx.tooltip(rx.badge("Override", color_scheme="amber"), content=q.reason),
                rx.badge("Plan", color_scheme="gray"),
            )
        ),
    )


def audit_row(a: AuditView) -> rx.Component:
    return rx.hstack(
        rx.text(a.when, size="1", color_scheme="gray", white_space="nowrap"),
        rx.text(
            rx.text.strong(a.metric),
            " ",
            a.change,
            " · ",
            a.reason,
            rx.cond(a.who != "", rx.text.span(" · by ", a.who, color_scheme="gray")),
            size="1",
        ),
        spacing="2",
        align="start",
    )


def labelled(label: str, hint: str, field: rx.Component, html_for: str = "") -> rx.Component:
    """A field under a label and hint that stay in sight: a placeholder goes once something
    is typed (and a long one was cut off on a phone), taking its meaning with it. The
    hint's id is `<html_for>-hint`, for the field's aria-describedby."""
    text = rx.text(label, size="2", weight="medium")
    return rx.vstack(
        rx.el.label(text, html_for=html_for) if html_for else text,
        field,
        *([rx.text(hint, size="1", color_scheme="gray", id=f"{html_for}-hint")] if hint else []),
        spacing="1",
        width="100%",
    )


def typed_field(
    label: str,
    hint: str,
    name: str,
    value: rx.Var,
    setter: rx.EventHandler,
    max_length: int,
    control: Callable[..., rx.Component] = rx.input,
    **props: Any,
) -> rx.Component:
    """A console form's typed field (form_field_props: uncontrolled, cleared by the state
    by `name`) under its label and hint (labelled), the hint its description."""
    described = {"custom_attrs": {"aria-describedby": f"{name}-hint"}} if hint else {}
    field = control(
        **form_field_props(name, value, setter, max_length),
        aria_label=label,
        width="100%",
        **described,
        **props,
    )
    return labelled(label, hint, field, html_for=name)


def override_form() -> rx.Component:
    # A form, so that Enter in the limit saves it as the button does.
    return rx.form(
        rx.vstack(
            rx.heading("Override a quota", size="3", as_="h3"),
            rx.flex(
                rx.box(
                    labelled(
                        "Metric",
                        "",
                        select(
                            A.metric_options, A.override_metric, A.set_override_metric, "Metric"
                        ),
                    ),
                    flex="0 0 auto",
                ),
                rx.box(
                    typed_field(
                        "New limit",
                        "A whole number; 0 means unlimited.",
                        "override-limit",
                        A.override_limit,
                        A.set_override_limit,
                        LIMIT_MAX,
                        placeholder="e.g. 250,000",
                        input_mode="numeric",
                    ),
                    flex="1",
                    min_width="140px",
                ),
                spacing="2",
                wrap="wrap",
                width="100%",
            ),
            typed_field(
                "Reason",
                "Required for an override; kept in the audit log.",
                "override-reason",
                A.override_reason,
                A.set_override_reason,
                REASON_MAX,
                control=rx.text_area,
            ),
            rx.cond(
                A.override_error != "",
                rx.callout(A.override_error, icon="circle-alert", color_scheme="red", width="100%"),
            ),
            rx.cond(
                A.override_saved != "",
                rx.callout(
                    A.override_saved, icon="circle-check", color_scheme="grass", width="100%"
                ),
            ),
            rx.hstack(
                rx.button("Save override", type="submit"),
                rx.button(
                    "Reset to plan",
                    on_click=A.clear_override,
                    type="button",
                    variant="soft",
                    color_scheme="gray",
                ),
                spacing="2",
            ),
            spacing="3",
            width="100%",
        ),
        on_submit=A.submit_override,
        width="100%",
    )


def copyable_id(label: str, value: rx.Var, url: rx.Var) -> rx.Component:
    """A Stripe id as copyable text; a dashboard link only with real Stripe (url set)."""
    return rx.cond(
        value != "",
        rx.hstack(
            rx.text(label, size="1", color_scheme="gray", min_width="88px"),
            rx.code(value, size="1", word_break="break-all"),
            rx.icon_button(
                rx.icon("copy", size=12),
                on_click=rx.set_clipboard(value),
                variant="ghost",
                size="1",
                aria_label="Copy " + label.lower(),
            ),
            rx.cond(
                url != "",
                rx.link(
                    rx.icon("external-link", size=12),
                    href=url,
                    is_external=True,
                    aria_label="Open in the Stripe dashboard",
                ),
            ),
            align="center",
            spacing="2",
        ),
    )


def subscription_summary() -> rx.Component:
    sub = A.detail_sub
    return rx.vstack(
        rx.hstack(
            rx.text(sub.headline, size="3", weight="medium"),
            rx.cond(sub.has_subscription, status_badge(sub.status_label, sub.status_color)),
            justify="between",
            align="center",
            width="100%",
            wrap="wrap",
        ),
        rx.cond(sub.ends_text != "", rx.text(sub.ends_text, size="2")),
        rx.cond(sub.period_text != "", rx.text(sub.period_text, size="2", color_scheme="gray")),
        rx.cond(
            sub.grace_text != "",
            rx.text(sub.grace_text, size="2", color=rx.color("amber", 11)),
        ),
        copyable_id("Customer", sub.customer_id, sub.customer_url),
        copyable_id("Subscription", sub.subscription_id, sub.subscription_url),
        spacing="1",
        width="100%",
        id="drawer-subscription",
    )


def detail_placeholder() -> rx.Component:
    """Shown until a newly opened user's detail arrives (never the previous user's)."""
    return rx.vstack(
        *[rx.skeleton(height=h, width="100%") for h in ("96px", "140px", "180px")],
        spacing="4",
        width="100%",
        id="drawer-loading",
        role="status",
        aria_label="Loading user detail",
        aria_busy="true",
    )


def detail_body() -> rx.Component:
    return rx.fragment(
        rx.heading("Subscription", size="3", as_="h3"),
        subscription_summary(),
        rx.cond(
            A.detail_invoices.length() > 0,
            rx.vstack(
                rx.heading("Recent invoices", size="3", as_="h3"),
                invoice_table(A.detail_invoices, "drawer-invoices-table", compact=True),
                # The drawer lists the newest few; an older one is in the Invoices tab,
                # narrowed to this customer.
                rx.button(
                    rx.icon("receipt", size=16),
                    "All invoices",
                    on_click=A.show_user_invoices,
                    variant="soft",
                    size="2",
                    aria_label="All invoices of " + A.detail_email + " in the Invoices tab",
                    id="drawer-all-invoices",
                ),
                spacing="2",
                width="100%",
            ),
        ),
        rx.heading("Usage this period", size="3", as_="h3"),
        rx.vstack(rx.foreach(A.detail_meters, drawer_meter), spacing="4", width="100%"),
        rx.heading("Quotas", size="3", as_="h3"),
        scroll_x(
            rx.table.root(
                rx.table.header(
                    rx.table.row(
                        *[
                            rx.table.column_header_cell(h)
                            for h in ("Metric", "Limit", "Plan limit", "Source")
                        ]
                    )
                ),
                rx.table.body(rx.foreach(A.detail_quotas, quota_row)),
                size="1",
                width="100%",
            )
        ),
        override_form(),
        rx.cond(
            A.detail_audit.length() > 0,
            rx.vstack(
                rx.heading("Recent changes", size="3", as_="h3"),
                rx.foreach(A.detail_audit, audit_row),
                spacing="2",
                width="100%",
            ),
        ),
    )


# Closing the drawer gives focus back to the button that opened it (a user's row, or an
# invoice's customer), or, when that row is gone (the list changed meanwhile), to the
# top of the list it was in: the users search, or the Invoices tab's filter (the search
# sits in the hidden Users tab there). Radix returns it only to a Trigger, and the
# drawer opens from State.
# Both twins of a listed opener (the table's, the phone card's) are asked: one is hidden
# (display: none, below or above 62em), and focus() does nothing there, so the one in
# sight takes it, also after the window was narrowed or widened with the drawer open.
_FOCUS_OPENER = rx.cond(
    A.opener_listed,
    rx.set_focus(OPENER_ID),
    rx.cond(
        A.drawer_opener == CUSTOMER_FILTER,  # closed by "All invoices": the list's chip
        rx.set_focus(CUSTOMER_FILTER),
        rx.cond(
            A.drawer_opener.contains("invoice-"),  # its table's or its card's
            rx.set_focus(INVOICE_FILTER_ID),
            rx.set_focus("user-search"),
        ),
    ),
)
_FOCUS_CARD_TWIN = rx.cond(A.opener_listed, rx.set_focus(CARD_OPENER_ID), rx.noop())


def user_drawer() -> rx.Component:
    return rx.drawer.root(
        rx.drawer.overlay(z_index="50"),
        rx.drawer.portal(
            rx.drawer.content(
                rx.vstack(
                    rx.hstack(
                        rx.vstack(
                            rx.drawer.title(A.detail_email, overflow_wrap="anywhere"),
                            rx.drawer.description(
                                A.detail_name, color="var(--gray-11)", overflow_wrap="anywhere"
                            ),
                            # What the JSON API names this customer by (`user_id`).
                            rx.text(
                                "User ID ",
                                rx.code(A.detail_id.to_string(), id="detail-user-id"),
                                size="2",
                                color_scheme="gray",
                            ),
                            spacing="1",
                            min_width="0",
                        ),
                        rx.drawer.close(
                            rx.icon_button(
                                rx.icon("x", size=16),
                                variant="ghost",
                                color_scheme="gray",
                                aria_label="Close",
                            )
                        ),
                        justify="between",
                        align="start",
                        width="100%",
                    ),
                    rx.cond(A.detail_loading, detail_placeholder(), detail_body()),
                    spacing="4",
                    width="100%",
                    # Taller than the screen: its own height, the drawer scrolls. Stretched
                    # to the drawer's (a flex row), it squeezed the tables' scroll boxes.
                    align_self="flex-start",
                ),
                position="fixed",
                top="0",
                right="0",
                bottom="0",
                left="auto",
                height="100%",
                width=["100%", "480px"],
                padding="24px",
                overflow_y="auto",
                # Not sideways: vaul's ::after reaches two drawers' widths past the edge (it
                # covers the gap while dragging), and overflow-y alone let that scroll.
                overflow_x="hidden",
                background="var(--color-panel-solid)",
                z_index="51",
                id="user-drawer",
                role="dialog",
                on_close_auto_focus=[_FOCUS_OPENER, _FOCUS_CARD_TWIN],
            )
        ),
        open=A.drawer_open,
        on_open_change=A.set_drawer_open,
        direction="right",
        # Focus goes into the drawer and stays there while it is open (vaul leaves it
        # behind by default, and Tab then walked the table under the overlay).
        custom_attrs={"autoFocus": True},
    )


def console() -> rx.Component:
    return rx.vstack(
        rx.hstack(
            rx.vstack(
                rx.heading("Billing admin", size="7"),
                rx.text("Customers, plans, usage and revenue.", color_scheme="gray"),
                spacing="1",
            ),
            # The console reads once per visit (the numbers move with webhooks): when it
            # read them, and read again.
            rx.vstack(
                rx.button(
                    rx.icon("refresh-cw", size=16),
                    "Refresh",
                    on_click=A.refresh_all,
                    variant="soft",
                    color_scheme="gray",
                    id="refresh-console",
                ),
                rx.text(
                    A.as_of,
                    title=A.as_of_title,
                    size="1",
                    color_scheme="gray",
                    white_space="nowrap",
                    id="as-of",
                ),
                align="end",
                spacing="1",
            ),
            justify="between",
            align="start",
            width="100%",
        ),
        rx.cond(
            A.error != "",
            rx.callout(A.error, icon="circle-alert", color_scheme="red", width="100%"),
        ),
        rx.grid(
            rx.foreach(A.stats, stat_card),
            columns=rx.breakpoints(initial="2", md="4"),
            spacing="3",
            width="100%",
            id="stats",
        ),
        rx.tabs.root(
            rx.tabs.list(
                rx.tabs.trigger("Users", value="users"),
                rx.tabs.trigger("Invoices", value="invoices"),
                rx.tabs.trigger("API keys", value="keys"),
            ),
            rx.tabs.content(users_panel(), value="users", padding_top="16px"),
            rx.tabs.content(invoices_panel(), value="invoices", padding_top="16px"),
            rx.tabs.content(keys_panel(), value="keys", padding_top="16px"),
            # The state's (sessionStorage-backed, so a reload keeps it): a click's switch
            # waits for one websocket round trip.
            value=A.tab,
            on_change=A.set_tab,
            width="100%",
        ),
        user_drawer(),
        # Out of the drawer and the tabs: mounted whether or not its form is in view.
        clear_saved(A.override_sent, OVERRIDE_FIELDS, A.settle_override),
        clear_saved(A.key_sent, KEY_FIELDS, A.settle_key),
        spacing="5",
        width="100%",
    )


@page("/admin", "Admin", on_load=rx.redirect("/admin/billing"), with_shell=False)
def admin_home() -> rx.Component:
    """/admin, as people type it: the console is /admin/billing."""
    return loading("Redirecting…")


@page("/admin/billing", "Admin", on_load=A.on_load)
def admin() -> rx.Component:
    return rx.cond(
        A.forbidden,
        forbidden(),
        rx.cond(
            A.signed_in & A.loaded,
            console(),
            # Opened while the database is down: say so, with a way to try again.
            rx.cond(A.error != "", load_error(A.error, "", retry=A.on_load), loading()),
        ),
    )
