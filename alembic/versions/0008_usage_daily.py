"""usage_daily and the counter's day: the daily chart without summing events

The daily chart (the dashboard's history, `GET /api/billing/usage?history=daily`) summed
the period's events through ix_usage_event_user_metric_occurred: for a user with 10
million events this period, 9.3 s on SQLite and 3.7 s on PostgreSQL, holding a worker
thread and a connection all along (bench/README.md, finding 48). Now:
- usage_counter keeps `day` (UTC) and `day_used`, the part of `used` written that day,
  in the same update that bumps `used`;
- when a write on another day changes `day`, the trigger below adds the closed day's
  `day_used` to its usage_daily row (once per counter and day);
- a write dated another day than its own (`occurred_at` in the past) adds to that
  day's usage_daily row directly.
The chart reads the period's usage_daily rows and its counters' `day_used`. A second
row bumped per write instead (a usage_daily upsert each time) cost PostgreSQL's batches
half their rate here: two hot rows per user where there was one, without autovacuum.
Nothing else read the events' index, so it goes: no event writes an entry to it.

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


# Added to, never overwritten: closing days in any order keeps the sum exact.
_CLOSE_DAY = """
INSERT INTO usage_daily (user_id, metric, period_start, day, quantity)
VALUES (OLD.user_id, OLD.metric, OLD.period_start, OLD.day, OLD.day_used)
ON CONFLICT (user_id, metric, period_start, day)
DO UPDATE SET quantity = usage_daily.quantity + excluded.quantity;
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
    # Plain ADD COLUMNs (SQLite's too: no table copy); `day` NULL until the next write.
    op.add_column("usage_counter", sa.Column("day", sa.Date(), nullable=True))
    op.add_column(
        "usage_counter",
        sa.Column("day_used", sa.BigInteger(), server_default="0", nullable=False),
    )
    if pg:
        op.execute(
            "CREATE FUNCTION usage_counter_close_day() RETURNS trigger LANGUAGE plpgsql AS $$"
            f"BEGIN {_CLOSE_DAY} RETURN NULL; END $$"
        )
        # WHEN is tested without calling the function: only a day's first write pays.
        op.execute(
            "CREATE TRIGGER usage_counter_day_closed AFTER UPDATE ON usage_counter "
            "FOR EACH ROW WHEN (OLD.day IS DISTINCT FROM NEW.day AND OLD.day_used > 0) "
            "EXECUTE FUNCTION usage_counter_close_day()"
        )
    else:
        op.execute(
            "CREATE TRIGGER usage_counter_day_closed AFTER UPDATE OF day ON usage_counter "
            "WHEN OLD.day IS NOT NEW.day AND OLD.day_used > 0 "
            f"BEGIN {_CLOSE_DAY} END"
        )
    with op.batch_alter_table("usage_event", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_event_user_metric_occurred")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER usage_counter_day_closed ON usage_counter")
        op.execute("DROP FUNCTION usage_counter_close_day()")
    else:
        op.execute("DROP TRIGGER usage_counter_day_closed")
    with op.batch_alter_table("usage_counter", schema=None) as batch_op:
        batch_op.drop_column("day_used")
        batch_op.drop_column("day")
    with op.batch_alter_table("usage_event", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_event_user_metric_occurred", ["user_id", "metric", "occurred_at"]
        )
    op.drop_table("usage_daily")
