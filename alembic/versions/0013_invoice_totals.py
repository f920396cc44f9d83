"""invoice.total, amount_remaining, starting_balance, ending_balance: what an invoice is for

A downgrade's proration invoice has a negative total (credited to the customer's balance)
and pays 0; an invoice the balance covers is paid with amount_paid 0; a partly paid one
has amount_remaining. amount_due/amount_paid alone showed these as "$0.00 Paid". Nullable:
older rows read as before (amount paid, else due) until their next event or `stripe sync`.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("total", "amount_remaining", "starting_balance", "ending_balance")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("invoice", sa.Column(name, sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("invoice", schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
