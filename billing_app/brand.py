"""The product's name, in a module of its own: the pages show it, and the CLI hands it to
the Stripe sandbox (its checkout, portal and invoices) without importing Reflex."""

BRAND = "Acme AI"
