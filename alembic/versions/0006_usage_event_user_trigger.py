"""usage_event: a trigger deletes a user's events, in place of the foreign key

PostgreSQL checks a foreign key row by row: each inserted event ran
`SELECT 1 FROM "user" WHERE id = $1 FOR KEY SHARE`, a row lock on the user, shared as a
MultiXact when batches write for the same users at once. Measured, 1,000-event inserts
from 4 connections on 1,000 users: 21-27 ms of PostgreSQL CPU per batch with the key,
15.5-21.5 without (bench/README.md, finding 43). What the key gave stays:
- an event of an unknown user is never committed: every write looks its users up
  in its own transaction and drops the events of any it did not find, and every new
  event is written in the transaction that bumps its user's counter, whose own
  foreign key (kept) locks the user or waits for its deletion;
- deleting a user deletes its events: the trigger below (a statement-level one with the
  deleted rows on PostgreSQL; a row-level one on SQLite).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 04:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite's key has no name: the convention names it for batch mode.
_SQLITE_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
_PG_FK = "usage_event_user_id_fkey"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE usage_event DROP CONSTRAINT {_PG_FK}")
        op.execute(
            """
            CREATE FUNCTION delete_usage_events_of_deleted_users() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                DELETE FROM usage_event e USING deleted_users d WHERE e.user_id = d.id;
                RETURN NULL;
            END $$
            """
        )
        op.execute(
            """
            CREATE TRIGGER user_deleted_usage_events AFTER DELETE ON "user"
            REFERENCING OLD TABLE AS deleted_users
            FOR EACH STATEMENT EXECUTE FUNCTION delete_usage_events_of_deleted_users()
            """
        )
        return
    with op.batch_alter_table("usage_event", naming_convention=_SQLITE_NAMES) as batch_op:
        batch_op.drop_constraint("fk_usage_event_user_id_user", type_="foreignkey")
    op.execute(
        """
        CREATE TRIGGER user_deleted_usage_events AFTER DELETE ON "user"
        BEGIN
            DELETE FROM usage_event WHERE user_id = OLD.id;
        END
        """
    )


def downgrade() -> None:
    op.execute('DROP TRIGGER user_deleted_usage_events ON "user"'
               if op.get_bind().dialect.name == "postgresql"
               else "DROP TRIGGER user_deleted_usage_events")  # fmt: skip
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION delete_usage_events_of_deleted_users()")
        op.execute(
            f"ALTER TABLE usage_event ADD CONSTRAINT {_PG_FK} "
            'FOREIGN KEY (user_id) REFERENCES "user" (id) ON DELETE CASCADE'
        )
        return
    with op.batch_alter_table("usage_event") as batch_op:
        batch_op.create_foreign_key(
            "fk_usage_event_user_id_user", "user", ["user_id"], ["id"], ondelete="CASCADE"
        )
