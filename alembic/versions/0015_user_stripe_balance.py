"""user.stripe_balance: the Stripe customer's balance, from customer.created/updated

A credit an admin adds in Stripe (a goodwill credit, a refund to the balance) changes the
customer's balance without an invoice; the dashboard shows what the newest customer event
said (`stripe_balance_at`: its `created`, so an older event never overwrites it). NULL on
existing rows: the invoices' ending balance stands in until their customer's next event.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-09 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

import billing_app.models.types
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("stripe_balance", "stripe_balance_currency", "stripe_balance_at")


def upgrade() -> None:
    op.add_column("user", sa.Column("stripe_balance", sa.BigInteger(), nullable=True))
    op.add_column(
        "user", sa.Column("stripe_balance_currency", sa.String(length=3), nullable=True)
    )
    op.add_column(
        "user",
        sa.Column(
            "stripe_balance_at", billing_app.models.types.UTCDateTime(timezone=True), nullable=True
        ),
    )


def downgrade() -> None:
    # Not batch_alter_table: on SQLite its table copy would drop the triggers on `user`
    # (migrations 0006-0007); SQLite (3.35+) drops the columns in place.
    for column in reversed(COLUMNS):
        op.execute(f'ALTER TABLE "user" DROP COLUMN {column}')
