"""drop the usage_counter index on (metric, period_start, used)

It indexed a column that every usage write changes, so PostgreSQL could never update a
counter in place (a HOT update): each bump wrote new entries into all three of the
table's indexes. The admin sort by usage it was meant for never used it (the sort is on
a LEFT JOIN's `coalesce(used, 0)`): measured with 100,000 users, each with a counter,
40.7 ms with it and 42.9 ms without on PostgreSQL, 38.0 / 37.3 ms on SQLite. Without it,
1,000-event batches spent 18 instead of 21-24 ms of PostgreSQL CPU each (bench/README.md,
finding 28).

Revision ID: 0003
Revises: 0002b
Create Date: 2026-12-01 00:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_counter", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_counter_metric_period_used")


def downgrade() -> None:
    with op.batch_alter_table("usage_counter", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_counter_metric_period_used", ["metric", "period_start", "used"]
        )
