"""/billing: the customer's dashboard (the seed's BillingDashboard)."""

from __future__ import annotations

from typing import Any

import reflex as rx
from reflex.vars.function import ArgsFunctionOperation

from billing_app.components.common import (
    card,
    empty,
    held,
    icon_link,
    invoice_item,
    invoice_table,
    load_error,
    meter,
    pager,
    section_title,
    sr_only,
    status_badge,
    table_or_list,
)
from billing_app.components.layout import loading, page
from billing_app.metrics import METRICS
from billing_app.states.billing import PRESSED
from billing_app.states.billing import BillingState as S
from billing_app.states.views import PlanView

# The page's heading: where the focus goes when what had it goes away.
TITLE_ID = "billing-title"
OPENING_CHECKOUT, OPENING_PORTAL = "Opening Checkout…", "Opening the portal…"


def to_stripe(key: object, handler: object) -> dict[str, object]:
    """Props for a button that opens Stripe (`key`: its plan, or "portal" / "fix"): it looks
    and reads as working from the press itself (the browser-side PRESSED), while the server
    works and the answer travels back, until the page leaves, the error shows, or the page
    reconnects after its socket dropped with the answer (states.billing PRESSED). Another
    press meanwhile changes nothing (and its handler refuses it). Not `disabled` nor Radix's
    `loading`: both drop the keyboard's focus to <body> (see `held`)."""
    return {
        "on_click": [
            PRESSED.set_value(rx.cond(PRESSED.value == "", key, PRESSED.value)),
            handler,
        ],
        **held((PRESSED.value != "") | (S.busy != ""), working(key)),
    }


def working(key: object) -> rx.Var:
    return PRESSED.value == key


def dismissible(icon: str, text: object, color: str, id_: str) -> rx.Component:
    """A callout-looking banner with a close button at its end (a flex row: Radix's
    callout grid would size the text column to its content)."""
    return rx.flex(
        rx.icon(icon, size=18, flex_shrink="0"),
        rx.text(text, size="2", flex="1"),
        rx.icon_button(
            rx.icon("x", size=14),
            # The button goes with its banner: the focus goes to the page's heading, not
            # to <body> (where a screen reader is left on nothing).
            on_click=[rx.set_focus(TITLE_ID), S.dismiss_notice],
            variant="ghost",
            color_scheme="gray",
            size="1",
            aria_label="Dismiss",
        ),
        align="center",
        spacing="3",
        padding="16px",
        border_radius="var(--radius-4)",
        background=rx.color(color, 3),
        color=rx.color(color, 11),
        id=id_,
        role="status",
        width="100%",
    )


def notices() -> rx.Component:
    # A fragment: absent notices leave no empty gap in the page's stack.
    return rx.fragment(
        rx.cond(
            S.checkout_notice == "success",
            dismissible(
                "circle-check",
                # Anyone can open ?checkout=success: claim no payment until the plan is live.
                rx.cond(
                    S.sub.is_subscriber,
                    rx.text.span("Thanks — your ", S.sub.plan_name, " plan is active."),
                    "Thanks — your plan will show here as soon as Stripe confirms the "
                    "payment (usually a few seconds).",
                ),
                "grass",
                "checkout-success",
            ),
        ),
        # Back from the portal: what changed there, said, not only the heading changing.
        rx.cond(
            S.portal_notice != "",
            dismissible("circle-check", S.portal_notice, "grass", "portal-notice"),
        ),
        rx.cond(
            S.checkout_notice == "canceled",
            dismissible(
                "info",
                "Checkout was canceled. You have not been charged.",
                "gray",
                "checkout-canceled",
            ),
        ),
        rx.cond(
            S.sub.past_due | S.sub.held,
            rx.callout.root(
                rx.callout.icon(rx.icon("triangle-alert")),
                rx.hstack(
                    rx.vstack(
                        # What is owed and on which invoice, then until when the plan holds.
                        rx.callout.text(
                            # "Your last payment failed.", unless nothing was tried yet.
                            rx.text.strong(S.sub.alert_title + " "),
                            rx.cond(S.due.text != "", S.due.text + " ", ""),
                            S.sub.grace_text,
                            S.sub.held_text,  # one of the two, never both
                        ),
                        rx.cond(  # no link to nowhere before the invoice has synced
                            S.due.hosted_url != "",
                            _invoice_link(S.due.hosted_url, S.due.number),
                            # Held, its invoice never attempted: not a failed payment (due).
                            rx.cond(
                                S.sub.held_invoice_url != "",
                                _invoice_link(S.sub.held_invoice_url, S.sub.held_invoice_number),
                            ),
                        ),
                        spacing="1",
                    ),
                    rx.button(
                        rx.cond(working("fix"), rx.spinner(size="1")),
                        rx.cond(working("fix"), OPENING_PORTAL, S.sub.alert_action),
                        color_scheme="amber",
                        size="2",
                        id="fix-payment",
                        **to_stripe("fix", S.manage_subscription),
                    ),
                    justify="between",
                    align="center",
                    width="100%",
                    wrap="wrap",
                ),
                color_scheme="amber",
                high_contrast=True,  # amber 11 on amber 3 is under WCAG's 4.5:1
                role="alert",
                id="past-due-banner",
                width="100%",
            ),
        ),
        rx.cond(
            S.error != "",
            rx.callout.root(
                rx.callout.icon(rx.icon("circle-alert")),
                rx.callout.text(S.error),
                color_scheme="red",
                role="alert",
                width="100%",
            ),
        ),
        # Each used-up meter by name, numbers and date; the amber warning for those near one.
        rx.cond(
            S.limit_notices.length() > 0,
            _usage_callout(
                rx.vstack(
                    rx.foreach(S.limit_notices, lambda n: rx.callout.text(n)),
                    spacing="1",
                ),
                "red",
                "limit-reached",
            ),
        ),
        rx.cond(
            S.near_limit_text != "",
            _usage_callout(rx.callout.text(S.near_limit_text), "amber", "near-limit"),
        ),
    )


def _invoice_link(url: Any, number: Any) -> rx.Component:
    return icon_link(
        "View invoice",
        "external-link",
        url,
        "View invoice " + number + " (opens in a new tab)",
        # The accent's indigo on amber is under WCAG's 4.5:1 (axe).
        color_scheme="amber",
        high_contrast=True,
    )


def _usage_callout(content: rx.Component, color: str, id_: str) -> rx.Component:
    return rx.callout.root(
        rx.callout.icon(rx.icon("gauge")),
        content,
        color_scheme=color,
        high_contrast=True,  # red or amber 11 on 3 is under WCAG's 4.5:1 (axe)
        id=id_,
        width="100%",
    )


def read_as(shown: rx.Component, label: object) -> rx.Component:
    """`shown` to the eye, `label` to a screen reader: a price and its period as one phrase
    ("$19.00 per month", not "$19.00" then "slash month"), a dot and "Live" as what it means."""
    return rx.box(sr_only(label), rx.box(shown, custom_attrs={"aria-hidden": "true"}))


def plan_summary() -> rx.Component:
    return card(
        rx.hstack(
            rx.text("Current plan", size="2", color_scheme="gray", weight="medium"),
            # No badge on Free: it only repeated the heading ("Free Free").
            rx.cond(S.sub.is_subscriber, status_badge(S.sub.status_label, S.sub.status_color)),
            justify="between",
            width="100%",
        ),
        rx.heading(S.sub.plan_name, size="8", id="current-plan", as_="h2"),
        rx.cond(
            S.sub.is_subscriber,
            rx.vstack(
                read_as(rx.text(S.sub.price, size="3", weight="medium"), S.sub.price_label),
                rx.text(S.sub.renews_text, size="2", color_scheme="gray"),
                spacing="1",
            ),
            rx.vstack(
                # A customer whose plan ended (canceled, or lapsed at its period's end) is
                # told so, not just shown Free.
                rx.cond(
                    S.sub.ended_text != "",
                    rx.text(S.sub.ended_text, size="2", weight="medium", id="plan-ended"),
                ),
                rx.text(
                    "Upgrade for higher limits and priority support.",
                    size="2",
                    color_scheme="gray",
                ),
                spacing="1",
            ),
        ),
        # A downgrade's proration credit: money the customer has with Stripe, shown
        # here rather than only as a "credited to balance" invoice row.
        rx.cond(
            S.credit_text != "",
            rx.text(S.credit_text, size="2", weight="medium", id="credit-balance"),
        ),
        rx.spacer(),
        # Set to cancel: Stripe's portal undoes it ("Don't cancel"), which the card says.
        rx.cond(
            S.sub.is_subscriber & S.sub.cancels,
            rx.text(
                "Changed your mind? Resume it in Manage subscription.",
                size="2",
                id="resume-hint",
            ),
        ),
        rx.cond(
            # A held subscription is cancelled there too (the banner and plans say so).
            S.sub.is_subscriber | S.sub.held,
            rx.button(
                rx.cond(working("portal"), rx.spinner(size="2"), rx.icon("settings", size=16)),
                rx.cond(working("portal"), OPENING_PORTAL, "Manage subscription"),
                variant="soft",
                size="3",
                width="100%",
                id="manage-subscription",
                **to_stripe("portal", S.manage_subscription),
            ),
            # One element (a link styled as the button beside it), so one Tab stop.
            rx.button(
                # The link scrolls to the plans; focus goes with it, so the next Tab
                # goes on from the plans rather than from here.
                rx.link(
                    "See plans",
                    href="#plans",
                    underline="none",
                    on_click=rx.set_focus("plans-title"),
                ),
                as_child=True,
                variant="soft",
                size="3",
                width="100%",
            ),
        ),
        height="100%",
    )


def usage_card() -> rx.Component:
    return card(
        section_title(
            "Usage this period",
            S.resets_text,
            read_as(
                rx.hstack(
                    rx.box(
                        width="8px", height="8px", border_radius="50%", background="var(--grass-9)"
                    ),
                    rx.text("Live", size="1", color_scheme="gray"),
                    align="center",
                    spacing="1",
                ),
                "Updates live",  # the bare word "Live" said nothing
            ),
            level="h2",
        ),
        rx.vstack(rx.foreach(S.meters, lambda m: meter(m)), spacing="5", width="100%"),
        height="100%",
    )


# 1,000,000 rather than 1000000 on the axis and in the tooltip: a JS function built from
# Reflex's own number formatting (Python, compiled), as Recharts takes only functions.
_value = rx.Var("value").to(int)
_GROUPED = ArgsFunctionOperation.create(("value",), f"{_value:,}")


def chart_card() -> rx.Component:
    return card(
        section_title(
            "Usage over time",
            rx.text.span(S.chart_total, " ", S.chart_label, " this period"),
            rx.segmented_control.root(
                *[
                    # Short labels keep the control inside a phone-width card.
                    rx.segmented_control.item(m.label.removesuffix(" tasks"), value=k)
                    for k, m in METRICS.items()
                ],
                value=S.chart_metric,
                on_change=S.set_chart_metric,
                size="1",
                aria_label="Metric shown in the chart",
                width=rx.breakpoints(initial="100%", sm="auto"),
            ),
            level="h2",
        ),
        rx.box(
            rx.cond(
                S.chart_empty,
                # Said in words: an empty chart drew a meaningless 0-4 axis.
                rx.center(
                    empty(
                        "chart-column",
                        "No usage yet this period",
                        "Daily " + S.chart_label + " show here as your services record them.",
                    ),
                    height="100%",
                    id="chart-empty",
                ),
                usage_chart(),
            ),
            width="100%",
            height="240px",
        ),
    )


def usage_chart() -> rx.Component:
    # Bars, not an area: on a period's first day there is one point, which an area chart
    # draws as nothing.
    return rx.recharts.bar_chart(
        rx.recharts.cartesian_grid(stroke_dasharray="3 3", vertical=False),
        rx.recharts.bar(
            data_key="value",
            name=S.chart_label,
            fill=rx.color("indigo", 8),
            max_bar_size=32,
            radius=[3, 3, 0, 0],
            is_animation_active=False,
        ),
        rx.recharts.x_axis(data_key="day", tick_line=False, font_size=12),
        rx.recharts.y_axis(
            tick_line=False,
            axis_line=False,
            font_size=12,
            width="auto",  # as wide as its longest tick (1,200,000 was cut at 80)
            tick_formatter=_GROUPED,
            allow_decimals=False,  # 3 tokens: ticks 0-3, not 0.75, 1.5...
        ),
        rx.recharts.graphing_tooltip(separator=": ", custom_attrs={"formatter": _GROUPED}),
        data=S.chart_data,
        # A Tab stop (Recharts' keyboard layer): named for what it shows, not by
        # its axis ticks read out in a row.
        custom_attrs={"aria-label": "Daily " + S.chart_label + " this period"},
        width="100%",
        height=240,
        margin={"left": 0, "right": 8, "top": 8, "bottom": 0},
    )


def plan_card(p: PlanView) -> rx.Component:
    button_label = rx.cond(
        p.is_current,
        "Current plan",
        rx.cond(
            S.sub.is_subscriber,
            # Set to cancel: a switch needs the plan resumed first (the button opens the
            # portal, never a second subscription's Checkout).
            rx.cond(S.sub.cancels, "Resume to switch to ", "Switch to ") + p.name,
            "Upgrade to " + p.name,
        ),
    )
    return rx.card(
        rx.vstack(
            rx.hstack(
                rx.heading(p.name, size="5", as_="h3"),
                rx.cond(
                    p.is_current,
                    rx.badge("Current", color_scheme="grass", radius="full"),
                    rx.cond(p.highlight, rx.badge("Popular", radius="full")),
                ),
                justify="between",
                width="100%",
            ),
            rx.text(p.description, size="2", color_scheme="gray"),
            read_as(
                rx.hstack(
                    rx.text(p.price, size="8", weight="bold"),
                    rx.text("/ month", size="2", color_scheme="gray"),
                    align="baseline",
                    spacing="1",
                ),
                p.price_label,
            ),
            rx.vstack(
                rx.foreach(
                    p.features,
                    lambda f: rx.hstack(
                        rx.icon("check", size=16, color=rx.color("grass", 9)),
                        rx.text(f, size="2"),
                        align="center",
                        spacing="2",
                    ),
                ),
                spacing="2",
            ),
            rx.spacer(),
            rx.button(
                rx.cond(working(p.key), rx.spinner(size="2")),
                rx.cond(
                    working(p.key),
                    rx.cond(S.sub.is_subscriber, OPENING_PORTAL, OPENING_CHECKOUT),
                    button_label,
                ),
                # Held: Checkout is refused (the plans' heading says why and what to do).
                disabled=p.is_current | S.sub.held,
                variant=rx.cond(p.highlight, "solid", "outline"),
                size="3",
                width="100%",
                id="choose-" + p.key,
                **to_stripe(p.key, S.choose_plan(p.key)),
            ),
            spacing="4",
            height="100%",
        ),
        size="3",
        border=rx.cond(p.highlight, "2px solid var(--indigo-8)", "undefined"),
        id="plan-" + p.key,
    )


def plans_section() -> rx.Component:
    return rx.vstack(
        section_title(
            "Plans",
            rx.cond(
                S.sub.is_subscriber,
                rx.cond(
                    S.sub.cancels,
                    "Your plan is set to end. To switch, resume it in the Stripe customer "
                    "portal; once it has ended, choose a plan here.",
                    "Changes are made in the secure Stripe customer portal.",
                ),
                rx.cond(
                    S.sub.held,
                    S.sub.held_plans_text,
                    "Pay securely with Stripe. Cancel any time.",
                ),
            ),
            heading_id="plans-title",
            level="h2",
        ),
        rx.grid(
            rx.foreach(S.plans, plan_card),
            columns=rx.breakpoints(initial="1", sm="2", md="3"),
            spacing="4",
            width="100%",
        ),
        id="plans",
        # Clear of the sticky 60px top bar: on a phone the jump to #plans put the heading
        # (which takes the focus) under it.
        scroll_margin_top="76px",
        spacing="4",
        width="100%",
    )


def invoices_card() -> rx.Component:
    return card(
        section_title("Invoices", "Receipts for every charge, downloadable as PDF.", level="h2"),
        rx.cond(
            S.invoice_total > 0,
            rx.vstack(
                # The six columns do not fit a phone: a list there.
                table_or_list(
                    invoice_table(S.invoices, "invoices-table", variant="surface"),
                    S.invoices,
                    invoice_item,
                    "invoices-list",
                    "Invoices",
                ),
                pager(
                    rx.text.span(
                        S.invoice_total, rx.cond(S.invoice_total == 1, " invoice", " invoices")
                    ),
                    S.invoice_page,
                    S.invoice_pages,
                    S.prev_invoices,
                    S.next_invoices,
                    "invoice",
                ),
                width="100%",
                spacing="3",
            ),
            empty("receipt", "No invoices yet", "Invoices appear here after your first payment."),
        ),
    )


def dashboard() -> rx.Component:
    return rx.vstack(
        rx.vstack(
            rx.heading("Billing", size="7", id=TITLE_ID, tab_index=-1),
            rx.text("Your plan, usage and invoices.", color_scheme="gray"),
            # Always there, so a screen reader reads out a meter crossing 80 % or its
            # limit while the bars move live (a callout added at once may go unread).
            sr_only(S.usage_alert, role="status", id="usage-status"),
            spacing="1",
        ),
        notices(),
        rx.grid(
            rx.box(plan_summary(), grid_column=rx.breakpoints(initial="span 1", md="span 1")),
            rx.box(usage_card(), grid_column=rx.breakpoints(initial="span 1", md="span 2")),
            columns=rx.breakpoints(initial="1", md="3"),
            spacing="4",
            width="100%",
        ),
        chart_card(),
        plans_section(),
        invoices_card(),
        spacing="6",
        width="100%",
    )


@page("/billing", "Billing", on_load=S.on_load)
def billing() -> rx.Component:
    return rx.cond(
        S.signed_in & S.loaded,
        dashboard(),
        # Opened while the database is down: say so; the poller shows the page once it
        # is back.
        rx.cond(S.error != "", load_error(S.error, "This page retries by itself."), loading()),
    )
