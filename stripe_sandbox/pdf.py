"""A hand-written, minimal but valid PDF 1.4 invoice (one page, Helvetica, no dependencies)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .objects import money


def _text(value: str) -> str:
    """A PDF string literal body: ASCII only (the built-in fonts have no Unicode), escaped."""
    ascii_only = value.replace("×", "x").replace("→", "->").replace("–", "-").replace("•", "*")
    ascii_only = ascii_only.encode("ascii", "replace").decode("ascii")
    return ascii_only.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _date(ts: int | None) -> str:
    """As the app and the hosted page write dates ("Jan 7, 2027")."""
    return datetime.fromtimestamp(ts, UTC).strftime("%b %-d, %Y") if ts else "-"


def issued_at(inv: dict[str, Any]) -> int | None:
    """Stripe's "Date of issue": when the invoice took effect (finalized), a draft's creation."""
    finalized = (inv.get("status_transitions") or {}).get("finalized_at")
    return inv.get("effective_at") or finalized or inv.get("created")


def invoice_pdf(inv: dict[str, Any], business_name: str) -> bytes:
    currency = inv["currency"]
    y = 780
    ops = ["BT"]

    def put(x: int, size: int, text: str, bold: bool = False) -> None:
        font = "/F2" if bold else "/F1"
        ops.append(f"{font} {size} Tf 1 0 0 1 {x} {y} Tm ({_text(text)}) Tj")

    put(50, 22, f"Invoice {inv['number'] or '(draft)'}", bold=True)
    put(400, 12, business_name, bold=True)
    y -= 30
    put(50, 11, f"Status: {inv['status']}")
    put(400, 10, "Stripe sandbox - test mode")
    y -= 16
    put(50, 11, f"Date of issue: {_date(issued_at(inv))}")
    y -= 16
    put(50, 11, f"Billed to: {inv['customer_email'] or inv['customer']}")
    y -= 16
    put(50, 11, f"Invoice id: {inv['id']}")
    y -= 36
    put(50, 11, "Description", bold=True)
    put(330, 11, "Period", bold=True)
    put(480, 11, "Amount", bold=True)
    for line in inv["lines"]["data"]:
        y -= 18
        period = line["period"]
        put(50, 10, (line["description"] or "")[:52])
        put(330, 10, f"{_date(period['start'])} - {_date(period['end'])}")
        put(480, 10, money(line["amount"], currency))
    y -= 30
    put(330, 11, "Total")
    put(480, 11, money(inv["total"], currency))
    y -= 18
    put(330, 11, "Amount paid")
    put(480, 11, money(inv["amount_paid"], currency))
    y -= 18
    put(330, 12, "Amount due", bold=True)
    put(480, 12, money(inv["amount_remaining"], currency), bold=True)
    ops.append("ET")
    content = "\n".join(ops).encode("latin-1")

    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] "
        b"/Resources << /Font << /F1 4 0 R /F2 5 0 R >> >> /Contents 6 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Title (%s) /Producer (stripe_sandbox) >>"
        % _text(f"Invoice {inv['number'] or inv['id']}").encode("latin-1"),
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        len(objects),
        xref_at,
    )
    return bytes(out)
