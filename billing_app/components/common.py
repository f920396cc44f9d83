"""Small shared widgets: cards, badges, usage meters, pagers, empty states."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import reflex as rx

from billing_app.states.views import InvoiceView, MeterView

# One line, cut short with an ellipsis (Reflex's rx.text has no `truncate` prop).
ONE_LINE: dict[str, str] = {
    "overflow": "hidden",
    "text_overflow": "ellipsis",
    "white_space": "nowrap",
}


def card(*children: rx.Component, **props: Any) -> rx.Component:
    return rx.card(
        rx.vstack(*children, spacing="4", width="100%"),
        size="3",
        width="100%",
        **props,
    )


def section_title(
    title: str,
    subtitle: str | rx.Var | None = None,
    *right: Any,
    heading_id: str | None = None,
    level: str | None = None,
) -> rx.Component:
    """A card's heading; `heading_id` makes the heading a target rx.set_focus can reach
    (focusable by script only, tabindex -1), for a link that jumps to the section.
    `level` ("h2"...): the heading's element, so a page's outline has one h1 (default h1)."""
    target = {"id": heading_id, "tab_index": -1} if heading_id else {}
    if level:
        target["as_"] = level
    return rx.hstack(
        rx.vstack(
            rx.heading(title, size="4", weight="bold", **target),
            rx.text(subtitle, size="2", color_scheme="gray")
            if subtitle is not None
            else rx.fragment(),
            spacing="1",
        ),
        *right,
        justify="between",
        align="center",
        width="100%",
        wrap="wrap",
        spacing="3",
    )


def status_badge(label: Any, color: Any) -> rx.Component:
    return rx.badge(label, color_scheme=color, variant="soft", radius="full", size="2")


def meter(m: MeterView, compact: bool = False) -> rx.Component:
    """One metric: label, used / limit, percent, and a bar (amber at 80 %, red at 100 %)."""
    numbers = rx.cond(
        m.unlimited,
        rx.text(
            rx.text.strong(m.used_text),
            " used · ",
            rx.badge("Unlimited", color_scheme="grass", variant="soft", radius="full"),
            size="2" if not compact else "1",
        ),
        rx.text(
            rx.text.strong(m.used_text),
            " / ",
            m.limit_text,
            rx.text.span(" · ", m.percent_text, color=rx.color(m.color, 11), weight="medium"),
            size="2" if not compact else "1",
        ),
    )
    bar = rx.cond(
        m.unlimited,
        rx.box(height="6px" if compact else "8px", width="100%",
               background="var(--grass-a4)", border_radius="999px"),
        rx.progress(
            value=m.percent,
            max=100,
            color_scheme=m.color,
            size="1" if compact else "2",
            # Its numbers, not Radix's clamped "100%" for 3,850% (views.MeterView.value_text).
            custom_attrs={
                "aria-label": m.label,
                "aria-valuetext": m.value_text,
                "data-color": m.color,
            },
        ),
    )  # fmt: skip
    if compact:
        return rx.vstack(
            rx.hstack(
                rx.text(m.label, size="1", color_scheme="gray"),
                numbers,
                justify="between",
                width="100%",
            ),
            bar,
            spacing="1",
            width="100%",
            min_width="160px",
        )
    return rx.vstack(
        rx.hstack(
            rx.hstack(
                rx.text(m.label, size="3", weight="medium"),
                # Said in words, not by the bar's red alone.
                rx.cond(
                    m.limit_reached,
                    rx.badge("Limit reached", color_scheme="red", variant="soft", radius="full"),
                ),
                align="center",
                spacing="2",
            ),
            numbers,
            justify="between",
            align="center",
            width="100%",
            wrap="wrap",
        ),
        bar,
        spacing="2",
        width="100%",
        id="meter-" + m.metric,
        custom_attrs={"data-testid": "meter"},
    )


def pager(text: Any, page: Any, pages: Any, on_prev: Any, on_next: Any, name: str) -> rx.Component:
    return rx.hstack(
        rx.text(text, size="2", color_scheme="gray"),
        rx.hstack(
            # aria-disabled, not disabled: a button disabled under the keyboard's focus
            # (Next reaching the last page) drops focus to <body>. The handlers ignore a
            # press past either end.
            rx.icon_button(
                rx.icon("chevron-left", size=16),
                on_click=on_prev,
                variant="soft",
                color_scheme="gray",
                aria_label=f"Previous {name} page",
                custom_attrs={"aria-disabled": page <= 1},
                opacity=rx.cond(page <= 1, "0.5", "1"),
                cursor=rx.cond(page <= 1, "not-allowed", "pointer"),
            ),
            rx.text(page, " / ", pages, size="2"),
            rx.icon_button(
                rx.icon("chevron-right", size=16),
                on_click=on_next,
                variant="soft",
                color_scheme="gray",
                aria_label=f"Next {name} page",
                custom_attrs={"aria-disabled": page >= pages},
                opacity=rx.cond(page >= pages, "0.5", "1"),
                cursor=rx.cond(page >= pages, "not-allowed", "pointer"),
            ),
            align="center",
            spacing="2",
        ),
        justify="between",
        align="center",
        width="100%",
    )


def held(busy: Any, mine: Any) -> dict[str, Any]:
    """Props for a button that starts slow work (Stripe): while any such work runs it reads
    and looks disabled (aria-disabled), yet keeps the keyboard's focus, which `disabled`
    (and Radix's `loading`) drop to <body>, so a refusal left the keyboard at the page's
    top. Its handler ignores a press meanwhile. `mine`: this button's own work."""
    return {
        "custom_attrs": {"aria-disabled": busy, "aria-busy": mine},
        "opacity": rx.cond(busy, "0.6", "1"),
        "cursor": rx.cond(busy, "progress", "pointer"),
    }


def empty(icon: str, title: str, text: str) -> rx.Component:
    return rx.center(
        rx.vstack(
            rx.icon(icon, size=28, color=rx.color("gray", 9)),
            rx.text(title, weight="medium"),
            rx.text(text, size="2", color_scheme="gray", align="center"),
            align="center",
            spacing="2",
        ),
        padding_y="32px",
        width="100%",
    )


def scroll_x(child: rx.Component) -> rx.Component:
    """Wide tables scroll sideways on a phone instead of squeezing."""
    return rx.box(child, width="100%", overflow_x="auto")


# The usual visually-hidden pattern: out of sight, still read by screen readers.
_SR_ONLY = {
    "position": "absolute",
    "width": "1px",
    "height": "1px",
    "margin": "-1px",
    "overflow": "hidden",
    "clip": "rect(0, 0, 0, 0)",
    "white_space": "nowrap",
}


def sr_only(text: Any, **props: Any) -> rx.Component:
    """A name only screen readers read, e.g. for a column of buttons or links; with
    role="status", a live region (out of the layout: no gap in a stack)."""
    return rx.el.span(text, style=_SR_ONLY, **props)


def data_table(
    headers: tuple[str | rx.Component, ...],
    rows: Any,
    render_row: Any,
    table_id: str,
    variant: str = "ghost",
    size: str = "2",
) -> rx.Component:
    """A table over a State list var, one `render_row` per item, scrolling on a phone."""
    return scroll_x(
        rx.table.root(
            rx.table.header(rx.table.row(*[rx.table.column_header_cell(h) for h in headers])),
            rx.table.body(rx.foreach(rows, render_row)),
            variant=variant,
            size=size,
            width="100%",
            id=table_id,
        )
    )


# A table from 62em (md) up, where its columns fit; a list of cards below (a phone).
WIDE_ONLY, NARROW_ONLY = (
    rx.breakpoints(initial="none", md="block"),
    rx.breakpoints(initial="block", md="none"),
)


def table_or_list(
    table: rx.Component, rows: Any, render_item: Any, list_id: str, label: str
) -> rx.Component:
    """`table` on a wide screen, a list of `render_item` (an <li> each) on a narrow one:
    both from the same State list var `rows`; the hidden one is out of the a11y tree."""
    return rx.fragment(
        rx.box(table, display=WIDE_ONLY, width="100%"),
        rx.el.ul(
            rx.foreach(rows, render_item),
            id=list_id,
            aria_label=label,
            display=NARROW_ONLY,
            margin="0",
            padding="0",
            width="100%",
        ),
    )


def list_item(*children: rx.Component, **props: Any) -> rx.Component:
    """One card of table_or_list's list: a row's fields stacked, a line under each."""
    return rx.el.li(
        *children,
        padding_y="12px",
        border_bottom="1px solid var(--gray-a4)",
        list_style="none",
        **props,
    )


def icon_link(label: str, icon: str, href: Any, name: Any = None, **props: Any) -> rx.Component:
    """A small external link with an icon after its label; nothing when `href` is empty.
    `name`: what a screen reader reads instead of the label (a column of "View" links
    says nothing of which row's, nor that each opens a new tab). `props`: rx.link's."""
    return rx.cond(
        href != "",
        rx.link(
            rx.hstack(rx.text(label), rx.icon(icon, size=12), spacing="1", align="center"),
            href=href,
            is_external=True,
            **({"aria_label": name} if name is not None else {}),
            size="2",
            white_space="nowrap",
            **props,
        ),
    )


def invoice_links(inv: InvoiceView) -> tuple[rx.Component, rx.Component]:
    """An invoice's View and PDF links, each named for its invoice for a screen reader."""
    return (
        icon_link(
            "View", "external-link", inv.hosted_url,
            "View invoice " + inv.number + " (opens in a new tab)",
        ),
        icon_link(
            "PDF", "download", inv.pdf_url,
            "PDF of invoice " + inv.number + " (opens in a new tab)",
        ),
    )  # fmt: skip


def invoice_row(
    inv: InvoiceView,
    compact: bool = False,
    customer: Callable[[InvoiceView], rx.Component] | None = None,
) -> rx.Component:
    """One invoice: number, date, description over period, amount, status, View and PDF
    links; `compact` (the admin drawer) is three columns, see invoice_table; `customer`
    (the admin's all-invoices tab) leads with a cell of its making for the customer."""
    number = rx.text(inv.number, weight="medium", white_space="nowrap")
    date = rx.text(inv.date, white_space="nowrap")
    note = rx.cond(
        inv.amount_note != "",
        rx.text(
            inv.amount_note,
            size="1",
            color_scheme="gray",
            white_space="normal" if compact else "nowrap",
        ),
    )
    badge = status_badge(inv.status_label, inv.status_color)
    docs = (rx.vstack if compact else rx.hstack)(
        *invoice_links(inv), spacing="1" if compact else "3"
    )
    if compact:
        return rx.table.row(
            rx.table.row_header_cell(
                rx.vstack(
                    number,
                    # Wraps: the drawer has no room for a line of its own.
                    rx.cond(
                        inv.description != "",
                        rx.text(inv.description, size="1", overflow_wrap="anywhere"),
                    ),
                    rx.text(date, size="1", color_scheme="gray"),
                    spacing="0",
                )
            ),
            rx.table.cell(
                rx.vstack(rx.text(inv.amount, white_space="nowrap"), note, badge, spacing="1")
            ),
            rx.table.cell(docs),
            align="center",
        )
    return rx.table.row(
        *([rx.table.cell(customer(inv))] if customer is not None else []),
        rx.table.row_header_cell(number),
        rx.table.cell(date),
        rx.table.cell(
            # What it bills for, over the period it covers.
            rx.cond(inv.description != "", rx.text(inv.description, white_space="nowrap")),
            rx.text(
                inv.period,
                white_space="nowrap",
                color_scheme="gray",
                size=rx.cond(inv.description != "", "1", "2"),
            ),
        ),
        rx.table.cell(rx.text(inv.amount, white_space="nowrap"), note),
        rx.table.cell(badge),
        rx.table.cell(docs),
        align="center",
    )


def invoice_item(
    inv: InvoiceView, *, customer: Callable[[InvoiceView], rx.Component] | None = None
) -> rx.Component:
    """One invoice on a phone (table_or_list): the table's six columns do not fit, and
    scrolled sideways they hid the amount, the status and the PDF behind a cut "Period"
    with no sign of more. `customer`, as in invoice_row, leads on a line of its own
    (keyword-only: rx.foreach passes a second positional argument, the index)."""
    return list_item(
        *([rx.box(customer(inv), max_width="100%", padding_bottom="4px")] if customer else []),
        rx.hstack(
            rx.vstack(
                rx.text(inv.number, weight="medium"),
                rx.cond(inv.description != "", rx.text(inv.description, size="2")),
                rx.text(inv.date, size="1", color_scheme="gray"),
                spacing="1",
            ),
            rx.vstack(
                rx.hstack(
                    rx.text(inv.amount, weight="medium", white_space="nowrap"),
                    status_badge(inv.status_label, inv.status_color),
                    align="center",
                    spacing="2",
                ),
                rx.cond(
                    inv.amount_note != "",
                    rx.text(inv.amount_note, size="1", color_scheme="gray"),
                ),
                rx.hstack(*invoice_links(inv), spacing="3"),
                align="end",
                spacing="1",
            ),
            justify="between",
            align="start",
            width="100%",
        ),
    )


def invoice_table(
    rows: Any,
    table_id: str,
    compact: bool = False,
    variant: str = "ghost",
    customer: Callable[[InvoiceView], rx.Component] | None = None,
) -> rx.Component:
    """The invoice table (billing page, admin drawer, admin invoices tab): a list of
    InvoiceView. `compact` fits the admin drawer (480px, a phone's width): number over
    description over date, amount over status, the links stacked, in a small table; six
    columns put the View and PDF links past its edge. `customer` adds a leading Customer
    column, for a list of everyone's invoices."""
    headers: tuple[str | rx.Component, ...] = (
        ("Invoice", "Amount", sr_only("Documents"))
        if compact
        else (
            *(("Customer",) if customer is not None else ()),
            "Number",
            "Date",
            "Description",
            "Amount",
            "Status",
            sr_only("Documents"),
        )
    )
    return data_table(
        headers,
        rows,
        lambda inv: invoice_row(inv, compact, customer),
        table_id,
        variant=variant,
        size="1" if compact else "2",
    )


def select(
    options: Any, value: Any, on_change: Any, label: str, trigger_id: str = "", **props: Any
) -> rx.Component:
    """A Radix select fed by [[value, label], ...] from a State var. `trigger_id`: its
    button's id, for rx.set_focus."""
    trigger_props = {"id": trigger_id} if trigger_id else {}
    return rx.select.root(
        rx.select.trigger(aria_label=label, min_width="140px", **trigger_props),
        rx.select.content(
            rx.foreach(options, lambda o: rx.select.item(o[1], value=o[0])),
        ),
        value=value,
        on_change=on_change,
        **props,
    )


def load_error(message: Any, hint: str, retry: Any = None) -> rx.Component:
    """In place of a page that could not load (e.g. the database is down): why, and
    what happens next; `retry`, an event, adds a Try again button."""
    return rx.center(
        rx.callout.root(
            rx.callout.icon(rx.icon("circle-alert")),
            rx.callout.text(message, " ", hint),
            *(
                [rx.button("Try again", on_click=retry, variant="soft", color_scheme="red")]
                if retry is not None
                else []
            ),  # fmt: skip
            color_scheme="red",
            role="alert",
            id="load-error",
            max_width="560px",
            width="100%",
        ),
        padding_y="96px",
        width="100%",
    )


def status_page(code: str, title: str, text: str, element_id: str) -> rx.Component:
    """A whole-page answer such as 403 or 404: the code, what happened, a way back."""
    return rx.center(
        rx.vstack(
            rx.text(code, size="9", weight="bold", color=rx.color("indigo", 9)),
            rx.heading(title, size="6", align="center"),
            rx.text(text, color_scheme="gray", align="center"),
            rx.link(rx.button("Back to billing", size="3"), href="/billing"),
            align="center",
            spacing="4",
            max_width="440px",
        ),
        padding_y="96px",
        width="100%",
        id=element_id,
    )
