"""The admin's key form: each mistake gets the message that names it (the UI shows it)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"name": "   "}, "name", "Enter a key name (1 to 200 characters)."),
        ({"name": "k"}, None, "Choose the user or name the service the key is for."),
        (
            {"name": "k", "user_id": "B", "service_name": "s"},
            None,
            "A key belongs to either a user or a service, not both.",
        ),
    ],
)
def test_key_form_mistakes_are_named(actors, body, field, message):
    if body.get("user_id") == "B":
        body = {**body, "user_id": actors.b.id}
    c = actors.cookie_client(actors.admin)
    before = c.get("/api/billing/admin/api-keys").json()["items"]
    r = c.post("/api/billing/admin/api-keys", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["message"] == message
    assert err.get("field") == field
    assert c.get("/api/billing/admin/api-keys").json()["items"] == before


def test_the_admin_forms_empty_name_is_named_first(session):
    """What the admin page's form calls: an empty form names the missing name first."""
    from billing_app.errors import ValidationFailed
    from billing_app.services import api_keys

    with pytest.raises(ValidationFailed) as err:
        api_keys.create_key(session, name="", user_id=None, service_name=None)
    assert (str(err.value), err.value.details.get("field")) == (
        "Enter a key name (1 to 200 characters).",
        "name",
    )
