"""Record many usage events at once: validated all or nothing, stored in ONE transaction.

The writes go through the metering core (`metering.apply_writes`): one multi-row
insert where a repeated idempotency key is a duplicate, not an error, and one upsert
per (user, metric, period). Any event's error aborts the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from sqlmodel import Session

from billing_app.clock import utcnow
from billing_app.errors import (
    BillingError,
    Forbidden,
    IdempotencyConflict,
    UserNotFound,
    ValidationFailed,
    batch_event_error,
    event_fields,
)
from billing_app.services.dto import RecordResult
from billing_app.services.metering import (
    UsageWrite,
    apply_writes,
    differing_fields,
    empty_key_header,
    lost_lock_race,
    other_values,
    prepare_write,
    user_vanished,
    write_problems,
)

MAX_BATCH = 1000
RUNS = 3  # a batch that lost a lock race runs again, as the writer's single writes do
BATCH_KEY_MAX = 250  # a batch's key, so that `<key>#<index>` fits an event's 255


def key_events(
    events: list[Any], batch_key: str
) -> tuple[ValidationFailed | None, list[dict[str, Any]]]:
    """Key each event without a key of its own as `<batch_key>#<index>` (in place): the
    same batch sent again is all duplicates. Returns the key's own problem (blank or too
    long: no event is keyed) and the events whose key another event has as its own (left
    unkeyed: it would be taken for that event's retry), for validate_batch to name with
    the events' other problems."""
    empty = empty_key_header(batch_key, BATCH_KEY_MAX)
    if empty is not None:
        return empty, []
    if len(batch_key) > BATCH_KEY_MAX:
        return ValidationFailed(
            f"A batch's Idempotency-Key must be 1 to {BATCH_KEY_MAX} characters "
            "(each event's key is it followed by #<index>).",
            field="idempotency_key",
        ), []
    # Strings only: a refused batch's events may hold anything (a list is unhashable).
    own = {
        k for ev in events if isinstance(ev, dict) and type(k := ev.get("idempotency_key")) is str
    }
    clashes = []
    for i, ev in enumerate(events):
        if isinstance(ev, dict) and ev.get("idempotency_key") is None:
            key = f"{batch_key}#{i}"
            if key in own:
                message = (
                    f"Its key would be {key}, which another event of the batch has as its "
                    "own: give this one a key, or rename that one."
                )
                clashes.append(
                    _bad_event(i, ValidationFailed.code, message, field="idempotency_key")
                )
            else:
                ev["idempotency_key"] = key
    return None, clashes


def validate_batch(
    events: list[dict[str, Any]],
    resolve_user: Callable[[Any], int] | None = None,
    known_users: Callable[[set[int]], set[int]] | None = None,
    *,
    key_problem: ValidationFailed | None = None,
    clashes: list[dict[str, Any]] | None = None,
) -> list[UsageWrite]:
    """Check every event; raise one ValidationFailed listing each bad event by index.
    `resolve_user`: whom an event's `user_id` (None when absent) acts for, or a
    ValidationFailed naming the event; a Forbidden refuses the whole batch.
    `known_users`: which of some user ids exist; asked only when the batch is refused
    anyway, so its error also names the events of unknown users (otherwise found when
    the batch is written). `key_problem`, `clashes`: key_events' answer, named in the
    same refusal."""
    if not isinstance(events, list) or not events:
        raise ValidationFailed("A batch needs at least one event.", field="events")
    if len(events) > MAX_BATCH:
        raise ValidationFailed(
            f"A batch holds at most {MAX_BATCH:,} events; got {len(events):,}.", field="events"
        )
    out, errors = check_events(events, resolve_user)
    if errors or clashes or key_problem is not None:
        errors = merge_bad_events(errors, clashes or [])
        if known_users is not None:
            errors = merge_bad_events(errors, unknown_users(events, known_users))
        raise_bad_events(errors, len(events), key_problem)
    return [w for _, w in out]


def merge_bad_events(*groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bad events by index, each once: an event named in several groups (the schema's,
    the rules', the unknown users') keeps the first one's code and message, and lists
    every problem in its `errors`."""
    by_index: dict[int, dict[str, Any]] = {}
    for group in groups:
        for e in group:
            seen = by_index.get(e["index"])
            if seen is None:
                by_index[e["index"]] = {**e, "errors": list(e["errors"])}
            else:
                seen["errors"].extend(e["errors"])
    return [by_index[i] for i in sorted(by_index)]


def check_events(
    events: list[Any],
    resolve_user: Callable[[Any], int] | None = None,
    skip: frozenset[int] = frozenset(),
) -> tuple[list[tuple[int, UsageWrite]], list[dict[str, Any]]]:
    """Each event's checks but `skip`'s: (index, write) of the good ones, and the bad
    ones in the one shape (api/errors.py's)."""
    out: list[tuple[int, UsageWrite]] = []
    errors: list[dict[str, Any]] = []
    now = utcnow()
    seen: dict[tuple[int, str], tuple[int, UsageWrite]] = {}
    for i, raw in enumerate(events):
        if i in skip:
            continue
        try:
            if not isinstance(raw, dict):
                raise ValidationFailed("Each event must be a JSON object.")
            user_id = raw.get("user_id")
            if resolve_user is not None:
                try:
                    user_id = resolve_user(user_id)
                except ValidationFailed as err:
                    # Named with the event's other problems (an unknown metric, ...), as a
                    # single write names them: not one refusal per fix.
                    errors.append(_unresolved(i, err, write_problems(raw, now)))
                    continue
            ev = prepare_write(
                user_id,
                raw.get("metric"),
                raw.get("quantity"),
                raw.get("idempotency_key"),
                raw.get("metadata"),
                raw.get("occurred_at"),
                now=now,
            )
        except Forbidden:
            raise
        except BillingError as err:
            errors.append(_bad_event(i, err.code, err.message, **err.details))
            continue
        first, prev = seen.setdefault((ev.user_id, ev.idempotency_key), (i, ev))
        # Most keys are seen once (prev is ev): no comparison on the batch's hot path.
        if prev is not ev and (
            differ := differing_fields(prev.metric, prev.quantity, prev.metadata, ev)
        ):  # named as the 409 for a stored key names them
            what = other_values(differ, prev.metric, prev.quantity)
            message = f"Idempotency key repeats event {first} with {what}."
            errors.append(
                _bad_event(
                    i,
                    IdempotencyConflict.code,
                    message,
                    field="idempotency_key",
                    idempotency_key=ev.idempotency_key,
                    differing_fields=differ,
                    repeats_index=first,
                )
            )
            continue
        out.append((i, ev))
    return out, errors


def raise_bad_events(
    errors: list[dict[str, Any]], total: int, key_problem: ValidationFailed | None = None
) -> None:
    """The batch's refusal: its bad events, and the batch key's problem (first) if any."""
    if key_problem is not None and not errors:
        raise key_problem
    message = f"{len(errors)} of {total} events are invalid; nothing was recorded."
    if key_problem is None:
        raise ValidationFailed(message, events=errors)
    key_field = {"field": "idempotency_key", "message": key_problem.message}
    key_field["type"] = key_problem.code
    raise ValidationFailed(
        f"{key_problem.message} {message}",
        field="idempotency_key",
        events=errors,
        fields=[key_field, *event_fields(errors)],
    )


def unknown_users(
    events: list[Any], known_users: Callable[[set[int]], set[int]]
) -> list[dict[str, Any]]:
    """The events naming a user id that does not exist (one query, for a batch refused
    anyway), whatever else is wrong with them."""
    named = [
        (i, ev["user_id"])
        for i, ev in enumerate(events)
        if isinstance(ev, dict)
        and type(ev.get("user_id")) is int  # bool is no user id
        and ev["user_id"] > 0
    ]
    ids = {uid for _, uid in named}
    missing = ids - known_users(ids) if ids else set()
    return [
        _bad_event(i, UserNotFound.code, UserNotFound.of(uid).message, field="user_id")
        for i, uid in named
        if uid in missing
    ]


def field_errors(index: int, values: dict[str, Any]) -> list[dict[str, Any]]:
    """An event's problems among `values` (some of its fields), as a bad event's
    problems, or none: for the fields the schema took of an event it refused."""
    problems = [
        {"field": field, "code": err.code, "message": err.message}
        for field, err in write_problems(values)
    ]
    return [batch_event_error(index, problems, problems[0]["message"])] if problems else []


def record_batch(
    session: Session, events: list[UsageWrite], *, detail: bool = True
) -> list[RecordResult | None]:
    """Store validated events in one transaction; a result per event, duplicates marked.
    `detail=False`: None for each new event instead of its result (not built at all).

    Either every new event and its counter bump commits, or nothing does.
    """
    if not events:
        return []
    check = partial(_all_or_nothing, len(events))
    for attempt in range(1, RUNS + 1):
        try:
            outcomes = apply_writes(session, events, check=check, commit=True, detail=detail)
            session.commit()
        except BaseException as err:
            session.rollback()
            # Run again: a vanished user is then named as unknown; a lost race goes through.
            if attempt < RUNS and (user_vanished(err) or lost_lock_race(err)):
                continue
            raise
        return outcomes  # type: ignore[return-value]
    raise AssertionError("unreachable")


def _all_or_nothing(total: int, errors: dict[int, BillingError]) -> None:
    """Raise for the batch if any event failed: unknown users and keys reused with other
    values all named at once (a 422 if a user is unknown, else a 409 for the keys)."""
    if not errors:
        return
    missing = [
        _bad_event(i, o.code, o.message, field="user_id")
        for i, o in errors.items()
        if isinstance(o, UserNotFound)
    ]
    reused = {i: o for i, o in sorted(errors.items()) if isinstance(o, IdempotencyConflict)}
    named = [
        _bad_event(i, o.code, o.message, **{"field": "idempotency_key", **o.details})
        for i, o in reused.items()
    ]
    if missing:
        what = "name an unknown user" if not named else "are invalid"
        raise ValidationFailed(
            f"{len(missing) + len(named)} of {total} events {what}; nothing was recorded.",
            events=merge_bad_events(missing, named),
        )
    if reused:
        i, o = next(iter(reused.items()))
        more = len(reused) - 1
        also = (
            f" {more} more event{'s' if more > 1 else ''} reuse{'' if more > 1 else 's'} "
            "a key with other values (`events`)."
            if more
            else ""
        )
        raise IdempotencyConflict(
            f"Event {i}: {o.message}{also} Nothing was recorded.",
            index=i,
            events=named,
            **o.details,
        )
    for i, o in errors.items():
        raise type(o)(f"Event {i}: {o.message} Nothing was recorded.", index=i, **o.details)


def _unresolved(
    index: int, err: ValidationFailed, others: list[tuple[str, ValidationFailed]]
) -> dict[str, Any]:
    """An event whose user was not resolved: that problem first, then each of `others`."""
    if not others:
        return _bad_event(index, err.code, err.message, **err.details)
    fields = [{"field": "user_id", "message": err.message, "type": err.code}]
    fields += [{"field": f, "message": e.message, "type": e.code} for f, e in others]
    return _bad_event(index, err.code, err.message, **{**err.details, "fields": fields})


def _bad_event(index: int, code: str, message: str, **details: Any) -> dict[str, Any]:
    """The shape of api/errors.py's bad events, keeping the error's own details (e.g.
    the field, or the unknown metric); an error naming several fields, each."""
    fields = details.pop("fields", None)
    if fields:
        problems = [
            {"field": f["field"], "code": f["type"], "message": f["message"]} for f in fields
        ]
    else:
        problems = [{"field": details.get("field", "event"), "code": code, "message": message}]
    return {**details, **batch_event_error(index, problems, message)}
