"""subscription.billing_cycle_anchor: the day Stripe's periods return to

A period's two ends do not tell the anchor's day when both fall on a short month's last
day (quarterly from Mar 31: Jun 30 -> Sep 30, then Dec 31; yearly from Feb 29: Feb 28 ->
Feb 28, then Feb 29), so the periods stepped from it (the renewal gap, backdated writes)
ended a day early. Nullable: NULL (older rows, until their next event) keeps the old guess.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

import billing_app.models.types
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "subscription",
        sa.Column(
            "billing_cycle_anchor",
            billing_app.models.types.UTCDateTime(timezone=True),
            nullable=True,
        ),
    )


def downgrade() -> None:
    with op.batch_alter_table("subscription", schema=None) as batch_op:
        batch_op.drop_column("billing_cycle_anchor")
