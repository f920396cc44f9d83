"""usage_daily: usage per user, metric, period and UTC day, in place of summing events

The daily chart (the dashboard's history, `GET /api/billing/usage?history=daily`) summed
the period's events through ix_usage_event_user_metric_occurred: for a user with 10
million events this period, 9.3 s on SQLite and 3.7 s on PostgreSQL, holding a worker
thread and a connection all along (bench/README.md, finding 48). Every write now adds to
its day's row in the transaction that bumps its counter, and the chart reads at most a
row per day and metric. Nothing else read the index, so it goes: each event no longer
writes an entry to it.

The rows are filled from the stored events, each in its counter's period.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 09:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel

import billing_app.models.types
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BACKFILL = """
INSERT INTO usage_daily (user_id, metric, period_start, day, quantity)
SELECT e.user_id, e.metric, c.period_start, {day}, sum(e.quantity)
FROM usage_event e
JOIN usage_counter c ON c.user_id = e.user_id AND c.metric = e.metric
 AND e.occurred_at >= c.period_start AND e.occurred_at < c.period_end
GROUP BY e.user_id, e.metric, c.period_start, {day}
"""


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "usage_daily",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("metric", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column(
            "period_start", billing_app.models.types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("quantity >= 0", name="ck_usage_daily_quantity"),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "user_id", "metric", "period_start", "day", name="uq_usage_daily_period_day"
        ),
        postgresql_with={"fillfactor": 70},
    )
    day = "CAST(timezone('UTC', e.occurred_at) AS date)" if pg else "date(e.occurred_at)"
    op.execute(_BACKFILL.format(day=day))
    with op.batch_alter_table("usage_event", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_event_user_metric_occurred")


def downgrade() -> None:
    with op.batch_alter_table("usage_event", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_event_user_metric_occurred", ["user_id", "metric", "occurred_at"]
        )
    op.drop_table("usage_daily")
