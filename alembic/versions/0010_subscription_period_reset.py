"""subscription.period_reset: the reset rule of the subscription's current period

With a plan that resets on its billing period beside calendar-month plans, a plan change
or a cancel mid-period moved the user to the other rule's counter at once, which held
only what was counted there: a downgrade or a cancel gave a fresh quota. The rule is now
the one the period began with, until the period ends. Nullable: NULL (older rows) means
the plan's rule, and the next event of the subscription stores it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("subscription", sa.Column("period_reset", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscription", schema=None) as batch_op:
        batch_op.drop_column("period_reset")
