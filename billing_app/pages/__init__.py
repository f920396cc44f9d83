"""One module per page; importing this package registers them all."""

from billing_app.pages import admin, auth, billing, index, not_found

__all__ = ["admin", "auth", "billing", "index", "not_found"]
