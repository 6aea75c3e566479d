"""No one in without a key, no key where it does not belong, no client that can hold the server.

Real server processes: key roles (admin, ingest, read; plain and `sha256:` hashed), secrets kept
out of logs and answers, the refusal to listen publicly with the default secret, per-key rate
limits, header limits, and slow clients (slowloris) cut off by the header and body timeouts.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import select
import socket
import time

import pytest

from tests import factories as f
from tests.e2e.exchange import exchange
from tests.server import ServerProcess, run_cli

pytestmark = pytest.mark.slow

ADMIN = "admin-" + secrets.token_hex(16)
INGEST = "ingest-" + secrets.token_hex(16)
INGEST_HASHED = "ingest2-" + secrets.token_hex(16)
READ = "read-" + secrets.token_hex(16)
READ_HASHED = "read2-" + secrets.token_hex(16)
EVERY_KEY = [ADMIN, INGEST, INGEST_HASHED, READ, READ_HASHED]


def sha256(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


KEY_ENV = {
    "LLM_METRICS_SECRET": sha256(ADMIN),
    "LLM_METRICS_INGEST_KEYS": f"{INGEST}, {sha256(INGEST_HASHED)}",
    "LLM_METRICS_READ_KEYS": f"{sha256(READ_HASHED).upper().replace('SHA256:', 'sha256:')},{READ}",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    db = tmp_path_factory.mktemp("security") / "events.db"
    with ServerProcess(db, LLM_METRICS_ACCESS_LOG="1", **KEY_ENV) as server:
        assert exchange(server.url, "POST", "/events", [f.started("seen")], key=ADMIN).status == 201
        yield server


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """Rate limits on, short timeouts, small header limits."""
    db = tmp_path_factory.mktemp("strict") / "events.db"
    with ServerProcess(db, LLM_METRICS_RATE_LIMIT="2", LLM_METRICS_RATE_BURST="5",
                       LLM_METRICS_HEADER_TIMEOUT="1", LLM_METRICS_BODY_TIMEOUT="1",
                       LLM_METRICS_MAX_HEADERS="30", LLM_METRICS_MAX_HEADER_SIZE="2KiB",
                       **KEY_ENV) as server:
        yield server


# ---- roles -----------------------------------------------------------------------------------

POST_EVENTS = ("POST", "/events")
READS = [("GET", "/events/metrics"), ("GET", "/events/metrics/sessions"),
         ("GET", "/events/metrics/session/seen"), ("GET", "/events?limit=1")]


@pytest.mark.parametrize("key", [ADMIN, INGEST, INGEST_HASHED], ids=["admin", "ingest", "ingest#"])
def test_admin_and_ingest_keys_may_post_events(server, key):
    answer = exchange(server.url, *POST_EVENTS, [f.started(f"by-{key[:6]}", key[-8:])], key=key)
    assert answer.status == 201, answer


@pytest.mark.parametrize("key", [ADMIN, READ, READ_HASHED], ids=["admin", "read", "read#"])
@pytest.mark.parametrize("method, path", READS)
def test_admin_and_read_keys_may_read(server, key, method, path):
    assert exchange(server.url, method, path, key=key).status == 200


@pytest.mark.parametrize("key", [INGEST, INGEST_HASHED], ids=["ingest", "ingest#"])
@pytest.mark.parametrize("method, path", READS)
def test_ingest_keys_may_not_read(server, key, method, path):
    answer = exchange(server.url, method, path, key=key)
    assert answer.status == 403, answer
    assert "ingest key" in answer.body["error"] and "may only POST" in answer.body["error"]


@pytest.mark.parametrize("key", [READ, READ_HASHED], ids=["read", "read#"])
@pytest.mark.parametrize("path", ["/events", "/v1/traces"])
def test_read_keys_may_not_post(server, key, path):
    before = exchange(server.url, "GET", "/health").body["position"]
    answer = exchange(server.url, "POST", path, [f.started("read-key-post", path)], key=key)
    assert answer.status == 403, answer
    assert "read key" in answer.body["error"]
    assert exchange(server.url, "GET", "/health").body["position"] == before


@pytest.mark.parametrize("key", [
    None, "", "secret", ADMIN + "x", ADMIN[:-1], ADMIN.upper(), sha256(ADMIN), sha256(INGEST_HASHED),
    sha256(ADMIN)[len("sha256:"):], "\u00e9" * 10,
], ids=["none", "empty", "default", "longer", "shorter", "case", "the hash itself",
        "an ingest hash", "bare hex", "non-ascii"])
def test_anything_but_a_configured_key_is_401(server, key):
    for method, path in [POST_EVENTS, *READS]:
        answer = exchange(server.url, method, path, [f.started()] if method == "POST" else None,
                          key=key)
        assert answer.status == 401, (key, path, answer)
        assert "x-internal-auth" in answer.body["error"]


def test_a_key_in_the_url_is_not_a_key(server):
    answer = exchange(server.url, "GET", f"/events/metrics?x-internal-auth={READ}&key={READ}",
                      key=None)
    assert answer.status == 401


def test_health_is_public(server):
    assert exchange(server.url, "GET", "/health", key=None).status == 200


def test_no_key_appears_in_answers_or_the_log(server):
    answers = [exchange(server.url, m, p, key=k) for k in EVERY_KEY + [ADMIN + "x"]
               for m, p in [("GET", "/events/metrics"), ("POST", "/events"), ("GET", "/nope")]]
    answers.append(exchange(server.url, "POST", "/events", b"{not json", key=INGEST,
                            headers={"content-type": "application/json"}))
    log = server.log()
    assert "POST /events" in log, "the access log is on, so requests are logged"
    for key in EVERY_KEY:
        for answer in answers:
            assert key not in answer.text and key not in str(answer.headers)
        assert key not in log
        assert hashlib.sha256(key.encode()).hexdigest() not in log


def raw_exchange(server: ServerProcess, head: bytes) -> tuple[int, dict, bytes]:
    """Send `head` (a request line and headers, as bytes) and read the answer to the end."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    fields = dict(line.decode().split(": ", 1) for line in headers.split(b"\r\n") if line)
    return int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, body


KEY_BYTES = ADMIN.encode()
UNREADABLE_KEY_LINES = [
    b"x-internal-auth: " + KEY_BYTES[:12] + b"\x01" + KEY_BYTES[12:],
    b"x-internal-auth: " + KEY_BYTES + b"\x7f",
    b"x-internal-auth: " + KEY_BYTES + b"\rx",
    b"x-internal-auth: " + KEY_BYTES + b"f" * 9000,
    b"x-internal auth: " + KEY_BYTES,
    b"x-internal-auth: " + KEY_BYTES + b"\r\nx-internal-auth: " + KEY_BYTES + b"\x00",
]


@pytest.mark.parametrize("line", UNREADABLE_KEY_LINES, ids=[
    "control character", "DEL", "bare CR", "over 8190 bytes", "space in the name", "NUL"])
def test_no_key_appears_when_the_http_parser_refuses_its_header(server, line):
    before = len(server.log())
    status, headers, body = raw_exchange(
        server, b"GET /events/metrics HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n")
    assert status == 400 and headers["content-type"].startswith("application/json"), body
    assert json.loads(body)["error"].startswith("malformed HTTP request: ")
    # The distinctive part of the key: not one 8-character piece of it may show.
    pieces = {ADMIN[i:i + 8] for i in range(len("admin-"), len(ADMIN) - 7)}
    deadline = time.monotonic() + 5
    while "refused an unreadable HTTP request" not in server.log()[before:]:
        assert time.monotonic() < deadline, server.log()[before:]
        time.sleep(0.05)
    logged = server.log()[before:]
    assert "Traceback" not in logged and "ERROR" not in logged, logged
    for piece in pieces:
        assert piece not in logged and piece.encode() not in body
    assert exchange(server.url, "GET", "/events/metrics", key=ADMIN).status == 200


# ---- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("secret", ["secret", sha256("secret")], ids=["plain", "hashed"])
def test_refuses_a_public_address_with_the_default_secret(tmp_path, secret):
    done = run_cli("serve", env={"LLM_METRICS_HOST": "0.0.0.0", "LLM_METRICS_SECRET": secret,
                                 "LLM_METRICS_DB": str(tmp_path / "e.db")}, timeout=30)
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0" in done.stderr and "LLM_METRICS_SECRET" in done.stderr


def test_listens_on_a_public_address_with_a_real_secret(tmp_path):
    with ServerProcess(tmp_path / "e.db", LLM_METRICS_HOST="0.0.0.0", **KEY_ENV) as server:
        assert exchange(server.url, "GET", "/events/metrics", key=ADMIN).status == 200


def test_a_bad_key_setting_is_refused_without_echoing_it(tmp_path):
    done = run_cli("serve", env={"LLM_METRICS_READ_KEYS": f"{READ},sha256:nothex",
                                 "LLM_METRICS_DB": str(tmp_path / "e.db")}, timeout=30)
    assert done.returncode == 2
    assert "LLM_METRICS_READ_KEYS" in done.stderr and "64 hex digits" in done.stderr
    assert READ not in done.stderr


# ---- rate limits, header limits --------------------------------------------------------------

def test_rate_limit_is_per_key_and_answers_429_with_retry_after(strict):
    answers = [exchange(strict.url, "GET", "/events/metrics", key=READ) for _ in range(15)]
    statuses = [a.status for a in answers]
    assert statuses[:5] == [200] * 5 and 429 in statuses, statuses
    limited = next(a for a in answers if a.status == 429)
    assert limited.headers["Retry-After"].isdigit()
    assert "read key 2" in limited.body["error"] and "2 requests/s" in limited.body["error"]
    # Another key has its own budget; public routes have none.
    assert exchange(strict.url, "GET", "/events/metrics", key=READ_HASHED).status == 200
    assert all(exchange(strict.url, "GET", "/health").status == 200 for _ in range(10))
    time.sleep(1.1)
    assert exchange(strict.url, "GET", "/events/metrics", key=READ).status == 200


def test_no_rate_limit_by_default(server):
    assert {exchange(server.url, "GET", "/events/metrics", key=READ).status
            for _ in range(40)} == {200}


@pytest.mark.parametrize("headers", [
    {f"x-h{i}": "v" for i in range(40)},
    {"x-big": "v" * 4000},
], ids=["too many headers", "header too long"])
def test_header_limits(strict, headers):
    answer = exchange(strict.url, "GET", "/events/metrics", key=ADMIN, headers=headers)
    assert answer.status in (400, 431), answer
    assert exchange(strict.url, "GET", "/health").status == 200


def test_request_line_too_long(strict):
    answer = exchange(strict.url, "GET", "/events/metrics/session/" + "x" * 4000, key=ADMIN)
    assert answer.status in (400, 414), answer


# ---- slow clients ----------------------------------------------------------------------------

def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def closed_within(sock: socket.socket, seconds: float, drip: bytes | None = None) -> float | None:
    """Seconds until the server closes `sock` (sending `drip` every 0.2 s meanwhile), or None."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        readable, _, _ = select.select([sock], [], [], 0.2)
        if readable:
            try:
                if sock.recv(65536) == b"":
                    return time.monotonic() - started
            except ConnectionError:
                return time.monotonic() - started
        if drip:
            try:
                sock.sendall(drip)
            except (BrokenPipeError, ConnectionError):
                return time.monotonic() - started
    return None


def test_slowloris_headers_are_cut_off_by_the_header_timeout(strict):
    sock = connect(strict)
    try:
        sock.sendall(b"GET /events/metrics HTTP/1.1\r\nHost: x\r\n")
        took = closed_within(sock, 6, drip=b"X-Drip: 1\r\n")
        assert took is not None and took < 3, took
    finally:
        sock.close()
    assert exchange(strict.url, "GET", "/health").status == 200


def test_idle_connections_are_closed(strict):
    sock = connect(strict)
    try:
        took = closed_within(sock, 6)
        assert took is not None and took < 3, took
    finally:
        sock.close()


def test_slow_body_gets_408_from_the_body_timeout(strict):
    sock = connect(strict)
    try:
        sock.sendall(b"POST /events HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 1000\r\nx-internal-auth: " + ADMIN.encode() + b"\r\n\r\n"
                     + b'[{"type": ')
        started = time.monotonic()
        sock.settimeout(5)
        head = sock.recv(65536)
        took = time.monotonic() - started
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 408"), head
    assert b"application/json" in head and b"request body not received within 1 s" in head
    assert took < 3, took
