"""Every bad input gets the right status and a JSON error naming what is wrong; nothing of a
rejected request is stored. The real app on a real SQLite file, through HTTP."""

from __future__ import annotations

import json
import time
import urllib.parse
from datetime import datetime, timedelta, timezone

import pytest
from yarl import URL

from events import codec
from events.records import Completed, Started
from events.schema import MAX_TOKENS
from events.sqlite_store import SQLiteStore
from events.store import NewEvent, slot_key
from service import keys
from service.app import create_app
from service.config import Config
from tests import factories as f

AUTH = {"x-internal-auth": "secret"}
MAX_BODY = 256 * 1024


@pytest.fixture
async def api(aiohttp_client, tmp_path):
    config = Config(db=str(tmp_path / "events.db"), max_body=MAX_BODY)
    return await aiohttp_client(create_app(config))


async def post(api, body, content_type="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**AUTH}
    if content_type is not None:
        headers["content-type"] = content_type
    resp = await api.post("/events", data=data, headers=headers)
    assert resp.content_type == "application/json"
    return resp.status, await resp.json()


async def stored_count(api) -> int:
    resp = await api.get("/health")
    return (await resp.json())["position"]


def ev(event: dict, **changes) -> dict:
    return {**event, **changes}


def session_path(session_id: str) -> str:
    """The URL path of a session, percent-encoded as a client must send it. Dot segments are
    sent as `%2E`: HTTP clients (yarl, curl, browsers) collapse a literal `.` or `..` segment."""
    quoted = urllib.parse.quote(session_id, safe="")
    if quoted in (".", ".."):
        quoted = quoted.replace(".", "%2E")
    return "/events/metrics/session/" + quoted


async def get_raw(api, path: str):
    """GET `path` exactly as written (no client-side normalisation or re-encoding)."""
    return await api.session.get(URL(f"http://{api.host}:{api.port}{path}", encoded=True),
                                 headers=AUTH)


def raw_event(replace: bytes, by: bytes) -> bytes:
    body = json.dumps(f.completed(duration_ms=1234)).encode()
    assert body.count(replace) == 1
    return body.replace(replace, by)


def paths(body) -> list[str]:
    return [d["path"] for d in body.get("details", [])]


# (case, body, expected path in details). Each is one event that must be refused with 400.
INVALID_EVENTS = [
    ("NaN literal", raw_event(b"1234", b"NaN"), "$"),
    ("Infinity literal", raw_event(b"1234", b"Infinity"), "$"),
    ("NaN as a string", f.completed(duration_ms="NaN"), "$.duration_ms"),
    ("number out of float range", raw_event(b"1234", b"1e999"), "$.duration_ms"),
    ("negative overflow", raw_event(b"1234", b"-1e999"), "$.duration_ms"),
    ("finite but absurd duration", f.completed(duration_ms=1e308), "$.duration_ms"),
    ("tokens 2^63", f.completed(prompt_tokens=2**63), "$.prompt_tokens"),
    ("tokens 2^64", f.completed(completion_tokens=2**64), "$.completion_tokens"),
    ("tokens 10^30", f.completed(total_tokens=10**30), "$.total_tokens"),
    ("tokens 2^63 - 1 (broke every later snapshot)", f.completed(prompt_tokens=2**63 - 1),
     "$.prompt_tokens"),
    ("tokens one over the bound", f.completed(completion_tokens=MAX_TOKENS + 1),
     "$.completion_tokens"),
    ("tool calls over the bound", f.completed(tool_calls=MAX_TOKENS + 1), "$.tool_calls"),
    ("prompt + completion over the bound", f.completed(prompt_tokens=MAX_TOKENS,
                                                       completion_tokens=1), "$.completion_tokens"),
    ("negative tokens", f.completed(prompt_tokens=-1), "$.prompt_tokens"),
    ("fractional tokens", f.completed(completion_tokens=2.5), "$.completion_tokens"),
    ("integral float tokens", f.completed(prompt_tokens=3.0), "$.prompt_tokens"),
    ("tokens as a string", f.completed(prompt_tokens="3"), "$.prompt_tokens"),
    ("negative duration", f.completed(duration_ms=-1), "$.duration_ms"),
    ("timestamp without offset", ev(f.started(), timestamp="2026-01-01T10:00:00"), "$.timestamp"),
    ("date only", ev(f.started(), timestamp="2026-01-01"), "$.timestamp"),
    ("not a timestamp", ev(f.started(), timestamp="yesterday"), "$.timestamp"),
    ("epoch number", ev(f.started(), timestamp=1767225600), "$.timestamp"),
    ("year 0001 (year 0 in UTC)", ev(f.started(), timestamp="0001-01-01T00:00:00+01:00"),
     "$.timestamp"),
    ("the Unix epoch", ev(f.started(), timestamp="1970-01-01T00:00:00Z"), "$.timestamp"),
    ("just before 2000", ev(f.started(), timestamp="1999-12-31T23:59:59.999999Z"), "$.timestamp"),
    ("empty session_id", f.started(session_id=""), "$.session_id"),
    ("empty request_id", f.started(request_id=""), "$.request_id"),
    ("empty event_id", f.started(event_id=""), "$.event_id"),
    ("over-long session_id", f.started(session_id="s" * 257), "$.session_id"),
    ("over-long request_id", f.started(request_id="r" * 257), "$.request_id"),
    ("over-long event_id", f.started(event_id="e" * 129), "$.event_id"),
    ("over-long model", f.started(model="m" * 257), "$.model"),
    ("over-long error_message", f.failed(error_message="x" * 4097), "$.error_message"),
    ("id of the wrong type", f.started(session_id=123), "$.session_id"),
    ("null id", f.started(request_id=None), "$.request_id"),
    ("unknown event type", ev(f.started(), type="LLM_REQUEST_CANCELLED"), "$.type"),
    ("lower-case event type", ev(f.started(), type="llm_request_started"), "$.type"),
    ("missing event type", {k: v for k, v in f.started().items() if k != "type"}, "$.type"),
    ("missing required field", {k: v for k, v in f.completed().items() if k != "prompt_tokens"},
     "$.prompt_tokens"),
    ("completed field on a started event", f.started(prompt_tokens=3), "$.prompt_tokens"),
    ("failed field on a completed event", f.completed(error_type="Timeout"), "$.error_type"),
    ("completed field on a failed event", f.failed(completion_tokens=1), "$.completion_tokens"),
    ("unknown field", f.started(colour="blue"), "$.colour"),
    ("nesting where a string goes", f.started(model=[[[["deep"]]]]), "$.model"),
    ("deeply nested unknown field", raw_event(b'"duration_ms"', b'"x": ' + b"[" * 50_000
                                              + b"]" * 50_000 + b', "duration_ms"'), "$.x"),
    ("a huge string", f.started(model="m" * 200_000), "$.model"),
    ("an array, not an event", [[f.started()]], "$"),
    ("a bare string", "LLM_REQUEST_STARTED", "$"),
    ("a bare number", 42, "$"),
    ("null", None, "$"),
]


@pytest.mark.parametrize("case, body, path", INVALID_EVENTS, ids=[c[0] for c in INVALID_EVENTS])
async def test_invalid_event_is_refused_naming_the_field(api, case, body, path):
    status, answer = await post(api, body)
    assert status == 400, answer
    assert path in paths(answer), answer
    assert answer["error"]
    assert await stored_count(api) == 0


async def test_every_invalid_event_of_a_batch_is_named_and_nothing_is_stored(api):
    batch = [f.started(request_id="a"), f.completed(request_id="a", prompt_tokens=-5),
             f.started(request_id="b"), ev(f.started(request_id="c"), timestamp="2026-01-01T00:00:00")]
    status, answer = await post(api, batch)
    assert status == 400
    assert [(d["index"], d["path"]) for d in answer["details"]] == [
        (1, "$.prompt_tokens"), (3, "$.timestamp")]
    assert await stored_count(api) == 0


async def test_timestamps_more_than_a_day_ahead_are_refused_a_bit_less_is_fine(api):
    now = datetime.now(timezone.utc)
    too_far = ev(f.started(request_id="far"), timestamp=(now + timedelta(days=1, minutes=5)).isoformat())
    status, answer = await post(api, too_far)
    assert (status, paths(answer)) == (400, ["$.timestamp"])
    assert "future" in answer["details"][0]["message"]
    skewed = ev(f.started(request_id="skew"), timestamp=(now + timedelta(hours=23)).isoformat())
    assert (await post(api, skewed))[0] == 201


async def test_the_earliest_time_and_the_largest_counts_are_accepted_and_add_up(api):
    events = [ev(f.started(request_id="a"), timestamp="2000-01-01T00:00:00Z"),
              ev(f.completed(request_id="a", prompt_tokens=MAX_TOKENS, completion_tokens=0),
                 timestamp="2000-01-01T01:00:00+01:00"),
              f.completed(request_id="b", prompt_tokens=0, completion_tokens=MAX_TOKENS,
                          cached_prompt_tokens=0, reasoning_tokens=MAX_TOKENS)]
    assert (await post(api, events))[0] == 201
    glob = await (await api.get("/events/metrics", headers=AUTH)).json()
    assert (glob["total_prompt_tokens"], glob["total_completion_tokens"], glob["total_tokens"]) \
        == (MAX_TOKENS, MAX_TOKENS, 2 * MAX_TOKENS)
    session = await (await api.get("/events/metrics/session/s1", headers=AUTH)).json()
    assert session["first_seen"].startswith("2000-01-01T00:00:00")


YEAR_0_US = codec.timestamp_to_us(datetime.fromisoformat("0001-01-01T00:00:00+01:00"))


async def test_a_year_0_event_already_in_the_log_breaks_no_reader(aiohttp_client, tmp_path):
    """Older versions stored any time; such a record (year 0 in UTC, below what `datetime`
    holds) is written here with the store itself, as ingest now refuses it."""
    db = str(tmp_path / "events.db")
    store = await SQLiteStore.open(db)
    await store.migrate()
    records = [Started("old", "r1", "gpt-4", YEAR_0_US),
               Completed("old", "r1", "gpt-4", YEAR_0_US + 1000, 1000.0, 10, 5, 15),
               Started("old", "r2", "gpt-4", 2**62)]  # far past year 9999, too
    await store.append([[NewEvent(f"e{i}", codec.TYPE_CODES[type(r)], codec.encode(r),
                                  slot_key(r), r) for i, r in enumerate(records)]])
    await store.close()
    api = await aiohttp_client(create_app(Config(db=db)))

    resp = await api.get("/events?after=0", headers=AUTH)
    assert resp.status == 200, await resp.text()
    lines = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert [e["timestamp"] for e in lines] == ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z",
                                               "9999-12-31T23:59:59.999999Z"]
    for path in ["/events/metrics", "/events/metrics/sessions", "/events/metrics/session/old",
                 "/events/metrics/models", "/events/metrics/models/gpt-4",
                 "/events/metrics/timeseries?bucket=1d", "/events/metrics/timeseries?bucket=1h",
                 "/events/metrics/timeseries?bucket=1d&from=0001-01-01T00:00:00Z"
                 "&to=0001-02-01T00:00:00Z", "/metrics"]:
        resp = await api.get(path, headers=AUTH)
        assert resp.status == 200, (path, await resp.text())
    session = await (await api.get("/events/metrics/session/old", headers=AUTH)).json()
    assert (session["total_requests"], session["first_seen"]) == (1, "0001-01-01T00:00:00Z")
    # What was stored can be exported, but not posted again: ingest refuses such a time.
    status, answer = await post(api, lines[0])
    assert (status, paths(answer)) == (400, ["$.timestamp"])


def test_slot_keys_of_ids_without_nul_in_the_session_are_what_older_logs_hold():
    import hashlib

    old = lambda kind, s, r: hashlib.blake2b(kind + s.encode() + b"\0" + r.encode(),
                                             digest_size=16).digest()
    assert slot_key(Started("s1", "r1", "m", 0)) == old(b"S", "s1", "r1")
    assert slot_key(Completed("s1", "r\0x", "m", 0, 1.0, 1, 1, 2)) == old(b"T", "s1", "r\0x")
    assert slot_key(Started("a\0b", "c", "m", 0)) != slot_key(Started("a", "b\0c", "m", 0))


async def test_nul_in_ids_does_not_make_two_requests_collide(api):
    batch = [f.started(session_id="a\0b", request_id="c"), f.started(session_id="a", request_id="b\0c"),
             f.completed(session_id="a\0b", request_id="c"),
             f.completed(session_id="a", request_id="b\0c")]
    status, answer = await post(api, batch)
    assert (status, answer.get("appended")) == (201, 4), answer
    # The rule still holds for such ids: a second terminal event is a conflict.
    status, answer = await post(api, f.failed(session_id="a\0b", request_id="c"))
    assert (status, paths(answer)) == (409, ["$.request_id"])


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    b"[" + json.dumps(f.started()).encode() + b"," + b"[" * 100_000 + b"]" * 100_000 + b"]",
    b"{" + b'"a":{' * 30_000 + b"}" * 30_001,
], ids=["nested arrays", "nested array in a batch", "nested objects"])
async def test_deeply_nested_json_is_a_400_not_a_crash(api, body):
    status, answer = await post(api, body)
    assert status == 400, answer
    assert paths(answer)[:1] in (["$"], ["$[1]"], ["$.a"]), answer
    assert (await post(api, body, "application/x-ndjson"))[0] == 400


@pytest.mark.parametrize("body, where", [
    (json.dumps(f.started(session_id="caf\u00e9")).encode().replace(b"caf\\u00e9", b"caf\xe9"),
     "UTF-8"),
    (b"\xff\xfe" + json.dumps(f.started()).encode("utf-16-le"), "UTF-8"),
    (json.dumps(f.started()).encode().replace(b'"s1"', b'"\\ud800"'), "surrogate"),
], ids=["latin-1 byte", "utf-16", "lone surrogate escape"])
async def test_invalid_utf8_is_a_400(api, body, where):
    for kind in ("application/json", "application/x-ndjson"):
        status, answer = await post(api, body, kind)
        assert status == 400, answer
        assert where.lower() in json.dumps(answer).lower() or "malformed" in answer["error"]
        assert paths(answer) in (["$"], [])
    status, answer = await post(api, b"[" + body + b"]")
    assert status == 400


async def test_body_over_the_limit_is_413_and_the_service_stays_up(api):
    events = [f.started(request_id=f"r{i}", model="m" * 200) for i in range(1200)]
    body = json.dumps(events).encode()
    assert len(body) > MAX_BODY
    status, answer = await post(api, body)
    assert status == 413
    assert str(MAX_BODY) in answer["error"]
    assert (await post(api, f.started()))[0] == 201


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/xml", "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded", "application/jsonx", "", None,
])
async def test_wrong_content_type_is_415_naming_it(api, content_type):
    status, answer = await post(api, f.started(), content_type)
    assert status == 415
    assert "content-type" in answer["error"]
    assert await stored_count(api) == 0


@pytest.mark.parametrize("body", [b"", b"   \n", b"[]", b"\n\n"])
async def test_empty_bodies_are_400(api, body):
    assert (await post(api, body))[0] == 400


async def test_100k_tiny_events_in_one_request(aiohttp_client, tmp_path):
    """A batch of 100k events is taken whole (with a body limit that fits it), quickly; one more
    than LLM_METRICS_MAX_EVENTS is refused naming the first event over the limit."""
    config = Config(db=str(tmp_path / "big.db"), max_body=16 * 1024**2)
    api = await aiohttp_client(create_app(config))
    line = b'{"type":"LLM_REQUEST_STARTED","session_id":"s","request_id":"%d","model":"",' \
           b'"timestamp":"2026-01-01T00:00:00Z"}'
    body = b"\n".join(line % i for i in range(100_001))
    status, answer = await post(api, body, "application/x-ndjson")
    assert status == 413
    assert paths(answer) == ["$[100000]"] and "100000" in answer["error"]
    assert await stored_count(api) == 0

    started = time.perf_counter()
    status, answer = await post(api, body[:body.rindex(b"\n")], "application/x-ndjson")
    elapsed = time.perf_counter() - started
    assert (status, answer["appended"]) == (201, 100_000)
    assert elapsed < 20, f"100k events took {elapsed:.1f} s"
    metrics = await (await api.get("/events/metrics", headers=AUTH)).json()
    assert metrics["in_flight_requests"] == 100_000


@pytest.mark.parametrize("body, kind", [
    (b"1\n" * 4_000_000, "application/x-ndjson"),
    (b"[" + b"1," * 4_000_000 + b"1]", "application/json"),
], ids=["ndjson", "array"])
async def test_millions_of_junk_items_are_refused_at_once(aiohttp_client, tmp_path, body, kind):
    """Counted before each item is decoded: no minutes of CPU, no answer as big as the body."""
    api = await aiohttp_client(create_app(Config(db=str(tmp_path / "junk.db"))))
    started = time.perf_counter()
    status, answer = await post(api, body, kind)
    assert (status, len(answer["details"])) == (413, 1), answer
    assert time.perf_counter() - started < 10


async def test_a_thousand_invalid_events_list_the_first_hundred(api):
    status, answer = await post(api, [f.started(request_id="")] * 1000)
    assert (status, len(answer["details"])) == (400, 100)
    assert "1000 of 1000 events are invalid" in answer["error"]
    assert "first 100 are listed" in answer["error"]


async def test_100k_tiny_events_over_the_default_body_limit_are_413(api):
    body = json.dumps([f.started(request_id=str(i)) for i in range(100_000)]).encode()
    status, answer = await post(api, body)
    assert status == 413 and "limit" in answer["error"]


# Ids that break naive URL handling, string formatting or SQL.
AWKWARD_IDS = [
    "team/a b", "100%", "%2F", "a%00b", "it's", 'say "hi"', "back\\slash", "nul\x00byte",
    "emoji \U0001F680\u2764\ufe0f", "\u202eright-to-left", "tab\tnewline\n", "?query=1#frag",
    "'; DROP TABLE events; --", "\" OR 1=1 --", "x'); DELETE FROM request_slots; --",
    "1; UPDATE events SET payload = NULL", "..", ".", "/", "%", " leading and trailing ",
]


@pytest.mark.parametrize("session_id", AWKWARD_IDS)
async def test_awkward_ids_are_stored_and_queried_back_through_the_url(api, session_id):
    events = [f.started(session_id, request_id=session_id, event_id=session_id[:120] + "-s"),
              f.completed(session_id, request_id=session_id, prompt_tokens=7, completion_tokens=2,
                          event_id=session_id[:120] + "-c")]
    status, answer = await post(api, events)
    assert (status, answer["appended"]) == (201, 2), answer
    resp = await get_raw(api, session_path(session_id))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["session_id"] == session_id
    assert (body["total_requests"], body["total_tokens"]) == (1, 9)
    # Re-posting is an idempotent no-op, found through the same id.
    assert (await post(api, events))[1]["duplicates"] == 2


SQL = ["'; DROP TABLE events; --", "\" OR \"1\"=\"1", "x'); DELETE FROM request_slots; --",
       "1 UNION SELECT payload FROM events --", "%' OR '%'='"]


async def test_sql_fragments_in_every_string_field_are_stored_verbatim(api):
    """Every string field of every event type carries SQL; the log keeps each value exactly and
    its tables are intact (every statement binds its values as parameters)."""
    events = []
    for i, text in enumerate(SQL):
        common = dict(session_id=f"{text}-s", request_id=f"{text}-r", model=f"{text}-m",
                      event_id=None)
        extra = dict(user_id=f"{text}-u", provider=f"{text}-p", tags=[text, f"{text}-t"])
        events += [
            f.started(**{**common, "event_id": f"{text}-e1"}, **extra),
            f.completed(**{**common, "event_id": f"{text}-e2"}, finish_reason=f"{text}-f",
                        **extra),
            f.failed(**{**common, "request_id": f"{text}-r2", "event_id": f"{text}-e3"},
                     error_type=f"{text}-t", error_message=f"{text}-msg", **extra),
        ]
    status, answer = await post(api, events)
    assert (status, answer["appended"]) == (201, len(events)), answer

    rows = await api.server.app[keys.STORE].read(0, 1000)
    assert [r[1] for r in rows] == [e["event_id"] for e in events]
    for row, sent in zip(rows, events):
        wire = codec.to_wire(codec.decode(row[2]), row[1])
        for name, value in sent.items():
            if isinstance(value, str) and name not in ("type", "timestamp"):
                assert getattr(wire, name) == value, name
            if name == "tags":
                assert list(getattr(wire, name)) == value
    glob = await (await api.get("/events/metrics", headers=AUTH)).json()
    assert glob["total_sessions"] == len(SQL)
    for text in SQL:
        resp = await get_raw(api, session_path(f"{text}-s"))
        assert (await resp.json())["failed_requests"] == 1


@pytest.mark.parametrize("query, name", [
    ("limit=1;DROP TABLE events", "limit"), ("limit=-1", "limit"), ("limit=1e3", "limit"),
    ("limit=99999999999999999999999", "limit"), ("cursor=abc", "cursor"), ("cursor=-5", "cursor"),
])
async def test_bad_query_parameters_are_400_naming_them(api, query, name):
    resp = await api.get("/events/metrics/sessions?" + query, headers=AUTH)
    assert resp.status == 400
    assert repr(name) in (await resp.json())["error"]


@pytest.mark.parametrize("query, name", [
    ("after=99999999999999999999", "after"), ("after=9223372036854775808", "after"),
    ("after=-1", "after"), ("limit=0", "limit"), ("wait=61", "wait"),
])
async def test_bad_log_query_parameters_are_400_naming_them(api, query, name):
    resp = await api.get("/events?" + query, headers=AUTH)
    assert resp.status == 400, await resp.text()
    assert repr(name) in (await resp.json())["error"]


async def test_the_largest_position_is_a_valid_after(api):
    resp = await api.get("/events?after=9223372036854775807", headers=AUTH)
    assert (resp.status, await resp.text()) == (200, "")


@pytest.mark.parametrize("name", AWKWARD_IDS)
async def test_awkward_model_and_user_ids_are_found_on_their_routes(api, name):
    events = [f.started(request_id="r", model=name, user_id=name),
              f.completed(request_id="r", model=name, user_id=name, prompt_tokens=7,
                          completion_tokens=2)]
    assert (await post(api, events))[0] == 201
    quoted = urllib.parse.quote(name, safe="")
    if quoted in (".", ".."):
        quoted = quoted.replace(".", "%2E")
    for route, key in [("models", "model"), ("users", "user_id")]:
        resp = await get_raw(api, f"/events/metrics/{route}/{quoted}")
        assert resp.status == 200, (route, await resp.text())
        body = await resp.json()
        assert (body.get(key), body["total_tokens"]) == (name, 9), body


async def test_unknown_routes_and_methods_answer_json(api):
    resp = await api.get("/nope", headers=AUTH)
    assert (resp.status, resp.content_type) == (404, "application/json")
    resp = await api.delete("/events", headers=AUTH)
    assert (resp.status, resp.content_type) == (405, "application/json")
