"""Is the browser tab that started a background task still connected?"""

from __future__ import annotations


def client_connected(token: str) -> bool:
    """True while the websocket for `token` is open on this worker.

    Background pollers check this so they stop when the tab closes. Outside a
    running app (unit tests) there is no namespace, and the answer is False.
    """
    try:
        from reflex.utils.prerequisites import get_and_validate_app

        namespace = get_and_validate_app().app.event_namespace
    except Exception:
        return False
    if namespace is None:
        return False
    return token in namespace.token_to_sid
