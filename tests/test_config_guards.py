"""Settings that would be unsafe or silently wrong stop the start with one line: the
Stripe sandbox (public webhook secret) off this machine or in prod, the default
SESSION_SECRET where it matters, half an OIDC setup, unknown plans, a bad PORT; and
rxconfig.py takes port, URLs and Redis from the same settings (so `.env` works)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from billing_app.plans import build_catalog
from billing_app.settings import (
    DEV_SESSION_SECRET,
    PROJECT_ROOT,
    SESSION_SECRET_MIN_LENGTH,
    ConfigError,
    Settings,
    load_settings,
)

# Every variable these tests set or whose absence they rely on.
CONFIG_VARS = (
    "ENVIRONMENT", "APP_URL", "API_URL", "PORT", "SESSION_SECRET", "REFLEX_REDIS_URL",
    "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "STRIPE_PRICE_BASIC", "STRIPE_PRICE_PRO",
    "STRIPE_PRICE_ENTERPRISE", "STRIPE_API_BASE", "OIDC_ISSUER", "OIDC_CLIENT_ID",
    "OIDC_CLIENT_SECRET", "BILLING_PLANS_JSON", "LOG_LEVEL", "GRANIAN_WORKERS", "ADMIN_EMAILS",
)  # fmt: skip
REAL_STRIPE = {
    "STRIPE_SECRET_KEY": "sk_live_abc",
    "STRIPE_WEBHOOK_SECRET": "whsec_abc",
    "STRIPE_PRICE_BASIC": "price_1",
    "STRIPE_PRICE_PRO": "price_2",
    "STRIPE_PRICE_ENTERPRISE": "price_3",
}
GOOD_SECRET = "0123456789abcdef" * 2  # exactly the minimum
PUBLIC = "https://billing.example.com"


def settings_from(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    """Settings from exactly `env` (no `.env`, nothing else from the environment)."""
    for var in CONFIG_VARS:
        monkeypatch.delenv(var, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings(_env_file=None)


def refused(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from(monkeypatch, **env)
    text = str(info.value)
    assert text.startswith("configuration error: ") and "\n" not in text
    return text


# ------------------------------------------------------------------ the Stripe sandbox


def test_the_sandbox_is_refused_when_app_url_is_not_this_machine(monkeypatch):
    """The review's forged webhook: signed with the public sandbox secret, it granted
    Enterprise. Such a deployment no longer starts."""
    assert refused(monkeypatch, APP_URL=PUBLIC) == (
        "configuration error: STRIPE_SECRET_KEY is required when APP_URL "
        "(https://billing.example.com) is not on this machine: the local Stripe sandbox's "
        "webhook secret is public (set ENVIRONMENT=dev to demo the sandbox on a network)"
    )


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.5:8000", "http://0.0.0.0:8000", "http://192.168.1.20",
     "http://localhost.example.com", "http://[2001:db8::1]:8000", "http://app.test"],
)  # fmt: skip
def test_any_host_but_loopback_counts_as_a_network(monkeypatch, url):
    assert f"APP_URL ({url}) is not on this machine" in refused(monkeypatch, APP_URL=url)


def test_a_public_api_url_alone_is_refused_too(monkeypatch):
    """API_URL is where webhooks arrive: public there is just as exposed."""
    text = refused(monkeypatch, APP_URL="http://localhost:8000", API_URL=PUBLIC)
    assert f"API_URL ({PUBLIC}) is not on this machine" in text


@pytest.mark.parametrize(
    "url",
    ["http://localhost:8000", "http://LOCALHOST:3000", "http://127.0.0.1:8000",
     "http://127.8.9.10", "http://[::1]:8000"],
)  # fmt: skip
def test_the_sandbox_runs_on_this_machine_without_any_setting(monkeypatch, url):
    s = settings_from(monkeypatch, APP_URL=url, API_URL=url)
    assert s.uses_stripe_sandbox and s.environment == "dev"


def test_the_default_urls_are_this_machine(monkeypatch):
    s = settings_from(monkeypatch)
    assert s.uses_stripe_sandbox and s.app_url == s.api_url == "http://localhost:8000"


def test_the_sandbox_is_refused_in_prod_even_on_localhost(monkeypatch):
    text = refused(monkeypatch, ENVIRONMENT="prod", SESSION_SECRET=GOOD_SECRET)
    assert text == (
        "configuration error: STRIPE_SECRET_KEY is required when ENVIRONMENT=prod: the "
        "local Stripe sandbox's webhook secret is public"
    )


@pytest.mark.parametrize("environment", ["dev", "test"])
def test_an_explicit_dev_or_test_environment_demos_the_sandbox_on_a_network(
    monkeypatch, environment
):
    """Only an explicit choice: `dev` is also the default, and the default must not do."""
    s = settings_from(monkeypatch, ENVIRONMENT=environment, APP_URL=PUBLIC, API_URL=PUBLIC)
    assert s.uses_stripe_sandbox and s.stripe_webhook_secret == "whsec_sandbox_secret"


def test_a_real_key_on_a_public_url_is_accepted(monkeypatch):
    s = settings_from(monkeypatch, **REAL_STRIPE, APP_URL=PUBLIC, SESSION_SECRET=GOOD_SECRET)
    assert not s.uses_stripe_sandbox and s.stripe_webhook_secret == "whsec_abc"


@pytest.mark.parametrize("url", ["billing.example.com", "ftp://billing.example.com", "https://"])
def test_app_url_must_be_an_http_url(monkeypatch, url):
    text = refused(monkeypatch, APP_URL=url)
    assert text.startswith("configuration error: APP_URL must be an http:// or https:// URL")


# ------------------------------------------------------------------ SESSION_SECRET


def test_the_default_session_secret_is_refused_in_prod(monkeypatch):
    assert refused(monkeypatch, **REAL_STRIPE, ENVIRONMENT="prod") == (
        "configuration error: SESSION_SECRET must be set when ENVIRONMENT=prod (the default "
        "is public): use 32+ random characters, e.g. `openssl rand -hex 32`"
    )


@pytest.mark.parametrize("env", [{}, {"ENVIRONMENT": "dev"}])
def test_the_default_session_secret_is_refused_with_real_stripe_on_a_public_url(monkeypatch, env):
    text = refused(monkeypatch, **REAL_STRIPE, **env, APP_URL=PUBLIC)
    assert text.startswith(
        f"configuration error: SESSION_SECRET must be set when APP_URL ({PUBLIC}) is not on "
        "this machine"
    )


def test_a_short_session_secret_is_refused_where_one_is_required(monkeypatch):
    short = "x" * (SESSION_SECRET_MIN_LENGTH - 1)
    assert refused(monkeypatch, **REAL_STRIPE, APP_URL=PUBLIC, SESSION_SECRET=short) == (
        "configuration error: SESSION_SECRET is 31 characters: use 32+ random characters, "
        "e.g. `openssl rand -hex 32`"
    )
    s = settings_from(monkeypatch, **REAL_STRIPE, ENVIRONMENT="prod", SESSION_SECRET=GOOD_SECRET)
    assert s.session_secret == GOOD_SECRET


def test_the_default_session_secret_is_fine_on_this_machine(monkeypatch):
    """Local development with real (test-mode) Stripe keys needs no secret of its own."""
    s = settings_from(monkeypatch, **REAL_STRIPE)
    assert s.session_secret == DEV_SESSION_SECRET


# ------------------------------------------------------------------ https in a deployment


@pytest.mark.parametrize(
    ("env", "name", "url", "why"),
    [({"ENVIRONMENT": "prod", "APP_URL": "http://192.0.2.2:8190"},
      "APP_URL", "http://192.0.2.2:8190", "ENVIRONMENT=prod"),
     ({"APP_URL": PUBLIC, "API_URL": "http://billing.example.com"},
      "API_URL", "http://billing.example.com", "serving real Stripe")],
)  # fmt: skip
def test_a_deployment_on_plain_http_is_refused(monkeypatch, env, name, url, why):
    """The review's deployment: prod on http://<host> started, answered its health check,
    and every sign-in bounced back to /login (the browser dropped the Secure cookie). The
    cookie is now Secure exactly over https, so on http it would travel in clear."""
    secret = {"SESSION_SECRET": GOOD_SECRET, "DATABASE_URL": "postgresql://db/billing"}
    assert refused(monkeypatch, **REAL_STRIPE, **secret, **env) == (
        f"configuration error: {name} ({url}) must be https:// when {why}: over http:// "
        "the session cookie crosses the network unencrypted, for anyone on the way to take "
        "(serve TLS, e.g. at a reverse proxy named in TRUSTED_PROXIES)"
    )
    # On this machine plain http stays fine (nothing crosses a network).
    local = {"APP_URL": "http://127.0.0.1:8190", "API_URL": "http://localhost:8190"}
    s = settings_from(monkeypatch, **REAL_STRIPE, **secret, ENVIRONMENT="prod", **local)
    assert s.app_url == "http://127.0.0.1:8190"


# ------------------------------------------------------------------ workers without Redis

PROD = {
    **REAL_STRIPE,
    "ENVIRONMENT": "prod",
    "SESSION_SECRET": GOOD_SECRET,
    "DATABASE_URL": "postgresql://db/billing",
    "APP_URL": PUBLIC,
    "API_URL": PUBLIC,
}


def test_prod_with_several_workers_and_no_redis_is_refused(monkeypatch):
    """The README's `GRANIAN_WORKERS=$(nproc)` without REFLEX_REDIS_URL started, and each
    page lost its state whenever its socket reached another worker."""
    assert refused(monkeypatch, **PROD, GRANIAN_WORKERS="4") == (
        "configuration error: REFLEX_REDIS_URL is required when ENVIRONMENT=prod runs 4 "
        "workers (GRANIAN_WORKERS): each keeps the pages' state in its own memory, so a page "
        "whose connection reaches another worker loses it (or set GRANIAN_WORKERS=1)"
    )
    assert "GRANIAN_WORKERS (two) must be a whole number" in refused(
        monkeypatch, **PROD, GRANIAN_WORKERS="two"
    )


@pytest.mark.parametrize(
    "env",
    [{**PROD, "GRANIAN_WORKERS": "4", "REFLEX_REDIS_URL": "redis://redis:6379/0"},
     {**PROD, "GRANIAN_WORKERS": "1"},
     PROD,  # unset: Reflex starts one worker without Redis
     {"ENVIRONMENT": "dev", "GRANIAN_WORKERS": "4"},
     {"ENVIRONMENT": "test", "GRANIAN_WORKERS": "4"}],
)  # fmt: skip
def test_workers_without_redis_are_fine_outside_that_case(monkeypatch, env):
    """Guard: one worker, Redis, or dev/test still start."""
    assert settings_from(monkeypatch, **env).environment == env["ENVIRONMENT"]


@pytest.mark.parametrize("raw", ["two", "0", "²"])
@pytest.mark.parametrize(
    "env",
    [{**PROD, "REFLEX_REDIS_URL": "redis://redis:6379/0"}, {"ENVIRONMENT": "dev"}],
)
def test_a_malformed_worker_count_is_one_line_with_redis_or_outside_prod(monkeypatch, env, raw):
    """With Redis set (or in dev) it passed, and `reflex run` died on Reflex's int() with a
    traceback after building the UI."""
    assert refused(monkeypatch, **env, GRANIAN_WORKERS=raw) == (
        f"configuration error: GRANIAN_WORKERS ({raw}) must be a whole number of workers, 1+"
    )


# ------------------------------------------------------------------ ADMIN_EMAILS


@pytest.mark.parametrize(
    ("raw", "bad"),
    [
        ("ops@example.com;boss@example.com", "ops@example.com;boss@example.com"),
        ("ops@example.com boss@example.com", "ops@example.com boss@example.com"),
        ("ops@example.com, ops", "ops"),
    ],
)
def test_admin_emails_that_are_not_addresses_are_one_line(monkeypatch, raw, bad):
    """Such a list made no one an admin, and nothing said so."""
    assert refused(monkeypatch, ADMIN_EMAILS=raw) == (
        f"configuration error: ADMIN_EMAILS {bad!r} is not an email address "
        "(separate several with commas)"
    )


def test_admin_emails_are_read_comma_separated(monkeypatch):
    got = settings_from(monkeypatch, ADMIN_EMAILS=" Ops@Example.com, boss@example.co.uk ,")
    assert got.admin_email_set == {"ops@example.com", "boss@example.co.uk"}
    assert settings_from(monkeypatch, ADMIN_EMAILS="").admin_email_set == frozenset()


# ------------------------------------------------------------------ STRIPE_API_BASE


@pytest.mark.parametrize("url", ["127.0.0.1:12111", "notaurl", "ftp://stripe.example.com"])
def test_a_malformed_stripe_api_base_is_one_line(monkeypatch, url):
    """It was taken as is: every Stripe call then failed as "could not reach Stripe,
    try again in a moment", which no retry fixes."""
    assert refused(monkeypatch, **REAL_STRIPE, STRIPE_API_BASE=url) == (
        "configuration error: STRIPE_API_BASE must be an http:// or https:// URL, "
        "e.g. http://127.0.0.1:12111"
    )


def test_a_stripe_api_base_url_is_kept_and_an_empty_one_is_unset(monkeypatch):
    base = "http://127.0.0.1:12111"
    assert settings_from(monkeypatch, **REAL_STRIPE, STRIPE_API_BASE=base).stripe_api_base == base
    assert settings_from(monkeypatch, **REAL_STRIPE, STRIPE_API_BASE=" ").stripe_api_base is None


# ------------------------------------------------------------------ LOG_LEVEL


def test_log_level_is_read_and_a_bad_one_is_one_line(monkeypatch):
    assert settings_from(monkeypatch, LOG_LEVEL=" warning ").log_level == "WARNING"
    assert refused(monkeypatch, LOG_LEVEL="loud").startswith("configuration error: LOG_LEVEL ")


# ------------------------------------------------------------------ OIDC


def test_an_oidc_issuer_needs_the_client_id_and_secret(monkeypatch):
    """Otherwise the login page offers SSO and its button 404s."""
    issuer = {"OIDC_ISSUER": "https://sso.example.com"}
    assert refused(monkeypatch, **issuer) == (
        "configuration error: OIDC_CLIENT_ID and OIDC_CLIENT_SECRET are required when "
        "OIDC_ISSUER is set"
    )
    assert refused(monkeypatch, **issuer, OIDC_CLIENT_ID="app") == (
        "configuration error: OIDC_CLIENT_SECRET is required when OIDC_ISSUER is set"
    )
    s = settings_from(monkeypatch, **issuer, OIDC_CLIENT_ID="app", OIDC_CLIENT_SECRET="s")
    assert (s.oidc_issuer, s.oidc_client_id, s.oidc_client_secret) == (
        "https://sso.example.com",
        "app",
        "s",
    )
    assert settings_from(monkeypatch, OIDC_ISSUER="").oidc_issuer is None  # empty = unset


# ------------------------------------------------------------------ BILLING_PLANS_JSON


@pytest.mark.parametrize(
    ("overrides", "plan"),
    [({"nope": {}}, "nope"), ({"Pro": {"limits": {"tokens": 5}}}, "Pro"),
     ({"pro": {"amount": 100}, "platinum": {}}, "platinum")],
)  # fmt: skip
def test_an_unknown_plan_in_billing_plans_json_is_refused(monkeypatch, overrides, plan):
    s = settings_from(monkeypatch, BILLING_PLANS_JSON=json.dumps(overrides))
    with pytest.raises(ConfigError) as info:
        build_catalog(s)
    assert str(info.value) == (
        f"configuration error: BILLING_PLANS_JSON has unknown plan {plan!r} "
        "(known: free, basic, pro, enterprise)"
    )


# ------------------------------------------------------------------ PORT and rxconfig.py


@pytest.mark.parametrize("port", ["abc", "0", "65536", "-1"])
def test_a_bad_port_is_one_line_naming_it(monkeypatch, port):
    assert refused(monkeypatch, PORT=port).startswith("configuration error: PORT ")


def test_the_default_urls_follow_port(monkeypatch):
    s = settings_from(monkeypatch, PORT="9123")
    assert (s.port, s.app_url, s.api_url) == (
        9123,
        "http://localhost:9123",
        "http://localhost:9123",
    )


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
    return {**env, "REFLEX_TELEMETRY_ENABLED": "false", **extra}


# Loads rxconfig.py as Reflex does, with the settings' `.env` pointed at argv[1] (the
# project's own `.env` is not ours to write), and prints what Reflex would use.
_LOAD_RXCONFIG = """
import json, sys
from billing_app import settings
settings.Settings.model_config["env_file"] = sys.argv[1]
import rxconfig
c = rxconfig.config
print(json.dumps([c.frontend_port, c.backend_port, c.deploy_url, c.api_url, c.redis_url]))
"""


def _load_rxconfig(env_file: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _LOAD_RXCONFIG, str(env_file)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=_clean_env(**env),
        timeout=120,
    )


def test_rxconfig_takes_port_urls_and_redis_from_dot_env(tmp_path):
    """The review: with these in `.env`, Reflex bound 8000 and sent the browser elsewhere."""
    env_file = tmp_path / ".env"
    env_file.write_text(
        "PORT=8765\nAPP_URL=http://127.0.0.1:8765\nAPI_URL=http://127.0.0.1:8766\n"
        "REFLEX_REDIS_URL=redis://127.0.0.1:6379/9\n"
    )
    proc = _load_rxconfig(env_file)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [
        8765, 8765, "http://127.0.0.1:8765", "http://127.0.0.1:8766", "redis://127.0.0.1:6379/9"
    ]  # fmt: skip


def test_rxconfig_defaults_are_localhost_on_port(tmp_path):
    proc = _load_rxconfig(tmp_path / "missing.env", PORT="8100")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [
        8100, 8100, "http://localhost:8100", "http://localhost:8100", None
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "abc"}, "configuration error: PORT Input should be a valid integer"),
        ({"APP_URL": PUBLIC}, "configuration error: STRIPE_SECRET_KEY is required when APP_URL"),
        (
            {"BILLING_PLANS_JSON": '{"Pro": {}}'},
            "configuration error: BILLING_PLANS_JSON has unknown plan 'Pro'",
        ),
    ],
)
def test_a_bad_setting_stops_rxconfig_with_one_line(tmp_path, env, message):
    """What `reflex run` loads first: exit 2 and the one line, not a 41-line traceback."""
    proc = _load_rxconfig(tmp_path / "missing.env", **env)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(message), proc.stderr


def test_reflex_run_with_several_workers_and_no_redis_stops_with_one_line(tmp_path):
    proc = _load_rxconfig(tmp_path / "missing.env", **PROD, GRANIAN_WORKERS="2")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        "configuration error: REFLEX_REDIS_URL is required when ENVIRONMENT=prod runs 2 "
        "workers (GRANIAN_WORKERS): each keeps the pages' state in its own memory, so a page "
        "whose connection reaches another worker loses it (or set GRANIAN_WORKERS=1)\n"
    )


def test_reflex_run_with_a_malformed_worker_count_stops_with_one_line(tmp_path):
    redis = {"REFLEX_REDIS_URL": "redis://127.0.0.1:6379/9"}
    proc = _load_rxconfig(tmp_path / "missing.env", **PROD, **redis, GRANIAN_WORKERS="two")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        "configuration error: GRANIAN_WORKERS (two) must be a whole number of workers, 1+\n"
    )


_RXCONFIG_HOST = """
import sys
from billing_app import settings
settings.Settings.model_config["env_file"] = None
import rxconfig
print(rxconfig.config.backend_host)
"""


@pytest.mark.parametrize(
    ("url", "host"),
    [("http://[::1]:8000", "::1"), ("http://localhost:8000", "127.0.0.1"),
     ("http://127.8.9.10:8000", "127.0.0.1")],
)  # fmt: skip
def test_the_sandbox_app_listens_where_its_local_url_is(url, host):
    """http://[::1]:8000 reached nothing: the app listened on 127.0.0.1 only."""
    proc = subprocess.run(
        [sys.executable, "-c", _RXCONFIG_HOST],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=_clean_env(APP_URL=url, API_URL=url),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == host


def test_prod_without_database_url_is_refused_not_run_on_sqlite(monkeypatch):
    """A deployment whose DATABASE_URL did not arrive (a typo such as DATABASE_URI, a
    secret store that did not load) used to start on the checkout's SQLite file and keep
    every signup, subscription and usage event there."""
    monkeypatch.delenv("DATABASE_URL", raising=False)  # the suite's own is set
    prod = {**REAL_STRIPE, "SESSION_SECRET": GOOD_SECRET, "APP_URL": PUBLIC, "API_URL": PUBLIC}
    text = refused(monkeypatch, **prod, ENVIRONMENT="prod")
    assert text.startswith("configuration error: DATABASE_URL must be set when ENVIRONMENT=prod")
    text = refused(monkeypatch, **prod)  # real Stripe on a public URL, no ENVIRONMENT
    assert "DATABASE_URL must be set when serving real Stripe" in text
    chosen = settings_from(monkeypatch, **prod, ENVIRONMENT="prod", DATABASE_URL="sqlite:///x.db")
    assert chosen.database_url == "sqlite:///x.db"  # SQLite on purpose is allowed
