"""stripe_event.payload as JSON instead of JSONB (PostgreSQL)

The payload is the event as Stripe sent it: kept for replays and for operators, read
whole, never queried inside. JSONB parses every 4.6 KB payload into its binary form on
insert; JSON only checks it and keeps the text. Measured: 207-266 against 292-478 µs
per insert of a Stripe subscription event (bench/README.md, finding 38). SQLite stores
both as text: nothing to do there.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 05:45:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE stripe_event ALTER COLUMN payload TYPE json USING payload::json")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE stripe_event ALTER COLUMN payload TYPE jsonb USING payload::jsonb")
