"""login attempts (rate limiting) and admin list indexes

Revision ID: 0002b
Revises: 0001
Create Date: 2026-11-25 13:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import billing_app.models.types

revision: str = "0002b"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "login_attempt",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
        sa.Column("ip", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column(
            "created_at", billing_app.models.types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("login_attempt", schema=None) as batch_op:
        batch_op.create_index("ix_login_attempt_email_created", ["email", "created_at"])
        batch_op.create_index("ix_login_attempt_ip_created", ["ip", "created_at"])
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.create_index(
            "ix_user_email_pattern", ["email"], postgresql_ops={"email": "varchar_pattern_ops"}
        )
        batch_op.create_index("ix_user_created_at", ["created_at"])
    with op.batch_alter_table("usage_counter", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_counter_metric_period_used", ["metric", "period_start", "used"]
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_counter", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_counter_metric_period_used")
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_index("ix_user_created_at")
        batch_op.drop_index("ix_user_email_pattern")
    with op.batch_alter_table("login_attempt", schema=None) as batch_op:
        batch_op.drop_index("ix_login_attempt_ip_created")
        batch_op.drop_index("ix_login_attempt_email_created")
    op.drop_table("login_attempt")
