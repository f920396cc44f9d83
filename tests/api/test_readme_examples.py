"""The README's service examples, taken from README.md as written and run against the
API over real HTTP (the fast lane in front of FastAPI, as in production): the curl lines
of "JSON API" and the Python client's example of "Calling the API from Python". Guards:
an example the server no longer answers as the README says fails here."""

from __future__ import annotations

import re
import shlex
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from billing_app.client import BillingClient
from billing_app.db import session_scope
from billing_app.services import quotas

README = Path(__file__).resolve().parents[2] / "README.md"
README_USER = 2  # the user the examples name: make run's demo user


def section(title: str) -> str:
    """The README's text under the heading `title`, up to the next heading of its level
    or above."""
    lines = README.read_text(encoding="utf-8").splitlines(keepends=True)
    level = len(title.split(" ", 1)[0])
    start = lines.index(f"{title}\n")
    fenced = False
    for end in range(start + 1, len(lines)):
        line = lines[end]
        fenced ^= line.startswith("```")  # a shell comment in a block is no heading
        heading = re.match(r"(#+) ", line)
        if not fenced and heading and len(heading[1]) <= level:
            break
    else:
        end = len(lines)
    return "".join(lines[start:end])


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def curl_lines(block: str) -> list[list[str]]:
    """Each curl command of a shell block as its words (continuation lines joined);
    the block's variables are this test's (`$APP`, `$KEY`)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words and re.fullmatch(r"(APP|KEY)=\S+", words[0]) and len(words) == 1:
            continue
        if words:
            commands.append(words)
    return commands


def curl(http: httpx.Client, argv: list[str]) -> httpx.Response:
    """What curl sends for the options the README uses: -X, -H, -d and the URL."""
    assert argv[0] == "curl", argv
    method, headers, data, url = None, {}, None, None
    words = iter(argv[1:])
    for word in words:
        if word == "-X":
            method = next(words)
        elif word == "-H":
            name, value = next(words).split(":", 1)
            headers[name.strip()] = value.strip()
        elif word == "-d":
            data = next(words)
        else:
            assert not word.startswith("-"), f"an option this test does not know: {word}"
            url = word
    assert url is not None, argv
    method = method or ("POST" if data is not None else "GET")
    return http.request(method, url, headers=headers, content=data)


def service_examples(base_url: str, key: str, user_id: int) -> list[list[str]]:
    """The JSON API section's "a service wiring itself to the API" commands, for this
    server, key and user."""
    text = section("## JSON API")
    block = next(b for b in code_blocks(text, "bash") if "/usage/consume" in b)
    named = rf'("user_id": |user_id=){README_USER}\b'
    assert re.search(named, block), f"the examples no longer name user {README_USER}"
    block = re.sub(named, rf"\g<1>{user_id}", block)
    block = block.replace("$APP", base_url).replace("$KEY", key)
    return curl_lines(block)


def test_the_service_curl_examples_answer_as_the_readme_says(live_server, actors):
    """Reserve, check, record, cancel, read what is left: each line's status and answer
    as the comments above it and the paragraphs after it say; then the same lines again,
    as a retry would send them."""
    commands = service_examples(live_server.url, actors.service_key, actors.a.id)
    assert len(commands) == 5, commands
    with httpx.Client(timeout=30) as http:
        consume, check, record, cancel, usage = (curl(http, argv) for argv in commands)
        assert consume.status_code == 201, consume.text
        assert consume.json()["event"]["idempotency_key"] == "job-1234"  # the header's key
        assert (consume.json()["metric"], consume.json()["used"]) == ("scraping_tasks", 1)
        assert check.status_code == 200, check.text
        assert check.json()["allowed"] is True and check.json()["requested"] == 1000
        assert record.status_code == 201, record.text
        ev = record.json()["event"]
        assert (ev["idempotency_key"], ev["metadata"]) == ("req-9f1c", {"model": "gpt-4"})
        assert record.json()["over_limit"] is False and record.json()["used"] == 812
        assert cancel.status_code == 200, cancel.text
        body = cancel.json()
        assert body["already_canceled"] is False and body["event"]["canceled_at"]
        assert body["canceled_at"] == body["event"]["canceled_at"]
        assert (body["metric"], body["used"]) == ("scraping_tasks", 0)  # the units went back
        assert usage.status_code == 200, usage.text
        metrics = {m["metric"]: m for m in usage.json()["metrics"]}
        for m in metrics.values():  # "every metric: used, limit, remaining, resets_at"
            assert {"used", "limit", "remaining", "resets_at"} <= m.keys(), m
        assert metrics["tokens"]["used"] == 812 and metrics["scraping_tasks"]["used"] == 0

        # Sent again: the writes are duplicates (the cancelled one counts nothing), the
        # cancel says it was cancelled before.
        consume, check, record, cancel, usage = (curl(http, argv) for argv in commands)
        assert consume.status_code == 200 and consume.json()["duplicate"] is True
        assert consume.json()["event"]["canceled_at"] and consume.json()["used"] == 0
        assert record.status_code == 200 and record.json()["duplicate"] is True
        assert cancel.status_code == 200 and cancel.json()["already_canceled"] is True
        metrics = {m["metric"]: m["used"] for m in usage.json()["metrics"]}
        assert metrics["tokens"] == 812 and metrics["scraping_tasks"] == 0


class JobFailed(Exception):
    pass


def test_the_python_client_example_runs_as_the_readme_says(live_server, actors):
    """The example's handle(job) as written: a job that runs is reserved and its tokens
    recorded; one that fails gives its unit back and re-raises; one over the quota is
    refused with the server's message, nothing recorded, the details the comment names."""
    text = section("### Calling the API from Python")
    example = next(b for b in code_blocks(text, "python") if "def handle" in b)
    refused: list[tuple[Any, str, BaseException | None]] = []

    def run(job: Any) -> Any:
        if job.fails:
            raise JobFailed(job.id)
        return SimpleNamespace(tokens=321)

    def refuse(job: Any, message: str) -> str:
        refused.append((job, message, sys.exc_info()[1]))  # the QuotaExceeded being handled
        return "refused"

    names: dict[str, Any] = {
        "APP_URL": live_server.url,
        "API_KEY": actors.service_key,
        "run": run,
        "refuse": refuse,
    }
    exec(compile(example, "README.md", "exec"), names)
    billing, handle = names["billing"], names["handle"]
    uid = actors.a.id

    def job(fails: bool = False) -> SimpleNamespace:
        return SimpleNamespace(id=uuid.uuid4().hex, user_id=uid, fails=fails)

    def used() -> dict[str, int]:
        return {m.metric: m.used for m in billing.usage(uid).metrics}

    try:
        assert handle(job()) is None
        assert used()["scraping_tasks"] == 1 and used()["tokens"] == 321

        with pytest.raises(JobFailed):
            handle(job(fails=True))
        assert used()["scraping_tasks"] == 1  # the failed job's unit went back

        with session_scope() as s:
            quotas.set_override(s, uid, "scraping_tasks", 1, "full", actor_user_id=actors.admin.id)
        over = job()
        assert handle(over) == "refused"
        [(who, message, err)] = refused
        assert who is over and message == err.message and "limit" in message
        assert {"used", "limit", "remaining", "resets_at"} <= err.details.keys()
        assert used() == {"tokens": 321, "api_calls": 0, "scraping_tasks": 1}
    finally:
        billing.close()


def test_the_python_check_then_record_example_runs_as_the_readme_says(live_server, actors):
    """complete(request) as written: a request that fits is checked, run and its tokens
    recorded; the same request again counts once; one asking more than is left is refused
    with the check's reason, nothing run or recorded."""
    text = section("### Calling the API from Python")
    example = next(b for b in code_blocks(text, "python") if "def complete" in b)
    refused: list[tuple[Any, str]] = []
    ran: list[Any] = []

    def generate(request: Any) -> Any:
        ran.append(request)
        return SimpleNamespace(tokens=request.max_tokens // 2, model="gpt-4")

    def refuse(request: Any, message: str) -> str:
        refused.append((request, message))
        return "refused"

    billing = BillingClient(live_server.url, actors.service_key, timeout=5)
    names: dict[str, Any] = {"billing": billing, "generate": generate, "refuse": refuse}
    exec(compile(example, "README.md", "exec"), names)
    complete, uid = names["complete"], actors.a.id

    def request(max_tokens: int) -> SimpleNamespace:
        return SimpleNamespace(id=uuid.uuid4().hex, user_id=uid, max_tokens=max_tokens)

    try:
        first = request(800)
        assert complete(first).tokens == 400
        assert complete(first).tokens == 400  # retried: run again, counted once
        assert billing.usage(uid).metric("tokens").used == 400
        again = billing.record(  # its key and metadata, as stored
            uid, "tokens", 400, idempotency_key=f"req-{first.id}", metadata={"model": "gpt-4"}
        )
        assert again.duplicate is True

        left = billing.usage(uid).metric("tokens").remaining
        assert left is not None
        big = request(left + 1)
        assert complete(big) == "refused"
        [(who, message)] = refused
        assert who is big and "remain" in message
        assert ran == [first, first] and billing.usage(uid).metric("tokens").used == 400
    finally:
        billing.close()
