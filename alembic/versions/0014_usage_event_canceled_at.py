"""usage_event.canceled_at: a usage event given back (POST /api/billing/usage/cancel)

A service that consumed or recorded usage before a job that then failed cancels the event
by its idempotency key. The row stays, marked here, so a late retry of the original write
is still a duplicate and never counts again; its quantity leaves the counters in the same
transaction. Nullable: existing events are not cancelled.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

import billing_app.models.types
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "usage_event",
        sa.Column(
            "canceled_at", billing_app.models.types.UTCDateTime(timezone=True), nullable=True
        ),
    )


def downgrade() -> None:
    # Not batch_alter_table: on SQLite its table copy fails on the `user` triggers that
    # name usage_event (migration 0006); SQLite (3.35+) drops the column in place.
    op.execute("ALTER TABLE usage_event DROP COLUMN canceled_at")
