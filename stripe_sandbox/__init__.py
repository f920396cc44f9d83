"""stripe_sandbox: a local, in-memory, Stripe-compatible fake server for development and tests.

See README.md in this folder. Entry points: :func:`create_app`, :class:`SandboxServer`,
``python -m stripe_sandbox``.
"""

from .app import create_app
from .config import API_VERSION, Plan, SandboxConfig
from .server import BackgroundServer, SandboxServer
from .store import SandboxState
from .webhooks import sign as sign_webhook

__all__ = [
    "API_VERSION",
    "BackgroundServer",
    "Plan",
    "SandboxConfig",
    "SandboxServer",
    "SandboxState",
    "create_app",
    "sign_webhook",
]
