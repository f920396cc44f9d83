"""subscription.cancel_at: a cancellation the customer portal schedules

Since late 2025 the customer portal (subscriptions in flexible billing mode, the default
on recent API versions) schedules a cancellation by setting `cancel_at` to the period's
end and leaves `cancel_at_period_end` false; the API can also set a `cancel_at` before
the period's end. Storing only the flag showed such a subscription as renewing. Nullable,
NULL until the subscription's next event: `billing-app stripe sync` fills it at once.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 13:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

import billing_app.models.types
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain nullable ADD COLUMN on both databases (no table copy on SQLite).
    op.add_column(
        "subscription",
        sa.Column("cancel_at", billing_app.models.types.UTCDateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    with op.batch_alter_table("subscription", schema=None) as batch_op:
        batch_op.drop_column("cancel_at")
