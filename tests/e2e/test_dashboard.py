"""The dashboard in real headless Chromium (Debian's `chromium`, driven by Playwright), against
a real server holding a few thousand varied requests (five models of four providers, one of them
unpriced, six users, tags, failures, cached and cache-write tokens, requests in flight).

What the page shows is checked against an oracle computed here from the events posted: totals
per range, per model and per user, a session's requests. Screenshots (desktop and phone) are
saved in the test's tmp dir; `LLM_METRICS_SCREENSHOTS=docs` refreshes the README's pictures.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import shutil
import time
import urllib.request
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from tests.factories import completed, failed, started
from tests.server import ROOT, SECRET, ServerProcess

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install -e '.[test]')")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's `chromium` (apt-get install -y "
                "chromium; .ci/run does) to run the dashboard tests", allow_module_level=True)

expect = playwright_api.expect
REQUESTS = 3000
# Ages kept clear of the ranges' edges, so that the few seconds between the oracle's "now" and
# the page's cannot move a request across one.
EDGES_S = [15 * 60, 3600, 86400, 7 * 86400, 30 * 86400]
HOSTILE = '<img src=x id=pwned onerror="window.__pwned=1">'


# (model, provider): one model the price table does not know, so the page must mark it unpriced.
FLEET = [("gpt-4o", "openai"), ("gpt-4o-mini", "openai"), ("claude-3-5-sonnet", "anthropic"),
         ("gemini-1.5-flash", "google"), ("house-finetune-v2", "self-hosted")]
USERS = ["alice", "bob", "carol", "dave", "erin", "frank"]
TAGS = ["prod", "staging", "eval", "chat", "batch"]
ERRORS = ["RateLimitError", "Timeout", "APIConnectionError", "BadRequestError"]


def varied_traffic(requests: int, seed: int = 18, now: datetime | None = None) -> list[dict]:
    """`requests` requests over the last 30 days, denser towards now (so that every range from
    15 minutes to 30 days has data): five models of four providers (one unpriced), six users,
    tags, ~7% failures of four types, cached and cache-write tokens, tool calls, and a few
    requests still in flight."""
    rng = random.Random(seed)
    now = now or datetime.now(timezone.utc)
    events = []
    for i in range(requests):
        sid = f"sess-{i // 9:04d}"
        model, provider = FLEET[rng.choices(range(5), weights=[5, 8, 4, 3, 1])[0]]
        user = USERS[(i // 9) % len(USERS)]
        tags = rng.sample(TAGS, rng.randint(0, 2))
        # Ages from seconds to 30 days, log-uniform: as many in the last hour as in the last week.
        at = now - timedelta(seconds=clear_of_edges(min(30 * 86400 - 60,
                                                        10 ** rng.uniform(0.5, 6.41))))
        duration = rng.lognormvariate(6.6 if "mini" in model or "flash" in model else 7.3, 0.7)
        common = {"user_id": user, "tags": tags, "provider": provider}
        events.append({**started(sid, f"r{i}", model), **common, "timestamp": at.isoformat(),
                       "event_id": f"{sid}-r{i}-s"})
        if i % 500 == 7 and at > now - timedelta(minutes=5):
            continue  # in flight
        end = (at + timedelta(milliseconds=duration)).isoformat()
        if rng.random() < 0.07:
            events.append({**failed(sid, f"r{i}", model, error_type=rng.choice(ERRORS),
                                    error_message="upstream said no"), **common,
                           "timestamp": end, "event_id": f"{sid}-r{i}-f"})
            continue
        prompt = rng.randint(200, 6000)
        cached = rng.choice([0, 0, prompt // 2, prompt - 100]) if prompt > 100 else 0
        write = rng.choice([0, 0, 0, min(256, prompt - cached)])
        events.append({**completed(sid, f"r{i}", model, duration_ms=round(duration, 1),
                                   prompt_tokens=prompt, completion_tokens=rng.randint(20, 1500),
                                   cached_prompt_tokens=cached, cache_write_prompt_tokens=write,
                                   tool_calls=rng.choice([0, 0, 0, 1, 2]),
                                   time_to_first_token_ms=round(duration * rng.uniform(.1, .4), 1),
                                   finish_reason=rng.choice(["stop", "stop", "length", "tool_calls"])),
                       **common, "timestamp": end, "event_id": f"{sid}-r{i}-c"})
    return events


def clear_of_edges(age_s: float) -> float:
    # "Now" is an edge too: a request must end (start + up to ~30 s) before the page's first
    # look, or the page's window misses what the oracle's counts.
    if age_s < 120:
        return 120 + age_s
    for edge in EDGES_S:
        if abs(age_s - edge) < 600:
            return edge + 600 if age_s < 30 * 86400 - 1200 else edge - 900
    return age_s


# ---- the oracle ------------------------------------------------------------------------------

def terminal(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] != "LLM_REQUEST_STARTED"]


def when(event: dict) -> datetime:
    return datetime.fromisoformat(event["timestamp"])


def within(events: list[dict], start: datetime, end: datetime, **where) -> list[dict]:
    """Finished requests (their terminal event) in [start, end) matching `where`."""
    out = []
    for e in terminal(events):
        if not start <= when(e) < end:
            continue
        if any((value not in e.get("tags", ())) if dim == "tag" else e.get(dim) != value
               for dim, value in where.items()):
            continue
        out.append(e)
    return out


def n(count: int) -> str:
    return f"{count:,}"


def post(server, events):
    for i in range(0, len(events), 5000):
        status, body = server.request("POST", "/events", events[i:i + 5000])
        assert status == 201, body


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(server, events, now): the server holds `events`, generated relative to `now`."""
    now = datetime.now(timezone.utc)
    events = varied_traffic(REQUESTS, now=now)
    # A session whose id is markup: it must show as text.
    events += [{**started(HOSTILE, "x1", "gpt-4o"), "timestamp": (now - timedelta(minutes=30)).isoformat()},
               {**completed(HOSTILE, "x1", "gpt-4o"), "user_id": "mallory",
                "timestamp": (now - timedelta(minutes=29)).isoformat()}]
    with ServerProcess(tmp_path_factory.mktemp("dash") / "dash.db") as server:
        post(server, events)
        yield server, events, now


def open_page(browser, server, fragment: str = "", **context) -> "playwright_api.Page":
    page = browser.new_page(**{"viewport": {"width": 1360, "height": 1000}, **context})
    page.goto(server.url + "/dashboard")
    page.evaluate(f"sessionStorage.setItem('llm-metrics-secret', {json.dumps(SECRET)})")
    page.goto(server.url + "/dashboard" + fragment)
    page.reload()
    expect(page.locator("#status")).to_have_text("live")
    return page


def view(page) -> dict:
    return parse_qs(page.evaluate("location.hash.slice(1)"))


def table(page, selector: str = "#breakdown") -> list[list[str]]:
    return page.locator(f"{selector} tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))")


def number(text: str) -> float:
    return float(re.sub(r"[^\d.]", "", text))


def save_screenshot(page, tmp_path, name: str, full_page: bool = True) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=full_page)
    assert shot.stat().st_size > 20_000  # a page, not a blank
    target = os.environ.get("LLM_METRICS_SCREENSHOTS")
    if target:
        folder = Path(target) if Path(target).is_absolute() else ROOT / target
        shutil.copy(shot, folder / name)
    return shot


# ---- the tests ---------------------------------------------------------------------------------

def test_login_then_a_range_change_updates_every_panel(browser, live, tmp_path):
    server, events, now = live
    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.goto(server.url + "/dashboard")
    expect(page.locator("#status")).to_have_text("signed out")  # not "offline" before login
    page.fill("#secret", "not-the-secret")
    page.click("#login button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("Refused")
    page.fill("#secret", SECRET)
    page.click("#login button[type=submit]")
    expect(page.locator("#status")).to_have_text("live")

    day = within(events, now - timedelta(days=1), now + timedelta(hours=1))
    expect(page.locator("#total-requests")).to_have_text(n(len(day)))
    assert view(page)["range"] == ["24h"]
    expect(page.locator("#requests-chart rect.hit")).to_have_count(25)  # hourly, empty ones too
    panels = {"#requests-chart": None, "#cost-chart": None, "#latency-chart": None,
              "#latency-hist": None}
    for selector in panels:
        panels[selector] = page.locator(selector).inner_html()

    page.click("#ranges button[data-range='1h']")
    hour = within(events, now - timedelta(hours=1), now + timedelta(hours=1))
    assert 0 < len(hour) < len(day)
    expect(page.locator("#total-requests")).to_have_text(n(len(hour)))
    assert view(page)["range"] == ["1h"]
    expect(page.locator("#requests-chart rect.hit")).to_have_count(61)  # per minute
    failed_hour = sum(e["type"] == "LLM_REQUEST_FAILED" for e in hour)
    expect(page.locator("#card-total-requests .sub")).to_have_text(
        f"{n(len(hour) - failed_hour)} ok · {n(failed_hour)} failed")
    done_hour = sum(e["type"] == "LLM_REQUEST_COMPLETED" for e in hour)
    expect(page.locator("#hist-note")).to_have_text(f"{n(done_hour)} completed requests")
    rows = table(page)
    assert sum(number(r[1]) for r in rows) == len(hour)
    for selector, before in panels.items():
        assert page.locator(selector).inner_html() != before, selector

    # Back to 24 h through the browser's history, as a user would.
    page.go_back()
    expect(page.locator("#total-requests")).to_have_text(n(len(day)))
    assert not [u for u in urls if SECRET in u.split("://", 1)[1].replace("127.0.0.1", "")]
    assert SECRET not in page.evaluate("location.href")
    save_screenshot(page, tmp_path, "dashboard.png")
    page.close()


def test_a_shared_link_shows_the_same_exact_view(browser, live):
    """A custom range and filters in the URL: every figure matches the oracle for them."""
    server, events, now = live
    start = (now - timedelta(days=3)).replace(microsecond=0)
    end = (now - timedelta(hours=2)).replace(microsecond=0)
    fragment = (f"#range=custom&from={start.isoformat().replace('+00:00', 'Z')}"
                f"&to={end.isoformat().replace('+00:00', 'Z')}&group=model&provider=openai")
    page = open_page(browser, server, fragment.replace("+", "%2B"))
    chosen = within(events, start, end, provider="openai")
    expect(page.locator("#total-requests")).to_have_text(n(len(chosen)))
    expect(page.locator(".chip")).to_have_text(re.compile("provider = openai"))
    by_model = Counter(e["model"] for e in chosen)
    expect(page.locator("#breakdown tbody tr")).to_have_count(len(by_model))
    shown = {r[0]: int(number(r[1])) for r in table(page)}
    assert shown == dict(by_model)
    tokens = sum(e.get("prompt_tokens", 0) + e.get("completion_tokens", 0) for e in chosen)
    expect(page.locator("#total-tokens")).to_have_text(n(tokens))

    # Axes carry labelled ticks and units; a bar's tooltip has the exact figures. The charts
    # draw after the totals (their own queries): wait for them rather than race them.
    page.locator("#requests-chart text.y-tick").nth(2).wait_for()
    page.locator("#requests-chart text.x-tick").nth(2).wait_for()
    expect(page.locator("#requests-chart text.axis-title").first).to_contain_text("time (UTC")
    expect(page.locator("#cost-chart text.y-tick").first).to_have_text("$0")
    expect(page.locator("#cost-chart text.y-tick").last).to_have_text(re.compile(r"^\$[\d.]+$"))
    expect(page.locator("#latency-hist text.x-tick").first).to_have_text(re.compile(r"^[\d.]+ (ms|s)$"))
    hourly = Counter(when(e).replace(minute=0, second=0, microsecond=0) for e in chosen)
    busiest, count = hourly.most_common(1)[0]
    index = int((busiest - start.replace(minute=0, second=0, microsecond=0)).total_seconds() // 3600)
    page.locator("#requests-chart rect.hit").nth(index).hover()
    expect(page.locator("#tooltip")).to_be_visible()
    expect(page.locator("#tooltip")).to_contain_text(f"{n(count)} requests")
    page.close()


def test_group_by_sort_and_filter(browser, live):
    server, events, now = live
    page = open_page(browser, server, "#range=30d")
    month = within(events, now - timedelta(days=30), now + timedelta(hours=1))
    page.select_option("#group", "user_id")
    users = Counter(e.get("user_id") for e in month)
    expect(page.locator("#breakdown tbody tr")).to_have_count(len(users))
    expect(page.locator("#breakdown thead th").first).to_have_text("User")
    assert {r[0]: int(number(r[1])) for r in table(page)} == dict(users)

    # Every column sorts, both ways: by the server for measures, here for the name.
    page.click("#breakdown th[data-key='failed_requests']")
    expect(page.locator("#breakdown th[data-key='failed_requests']")).to_have_attribute(
        "aria-sort", "descending")  # set when the re-sorted answer is shown
    failures = [int(number(r[2])) for r in table(page)]
    assert failures == sorted(failures, reverse=True)
    page.click("#breakdown th[data-key='failed_requests']")
    expect(page.locator("#breakdown th[data-key='failed_requests']")).to_have_attribute(
        "aria-sort", "ascending")
    failures = [int(number(r[2])) for r in table(page)]
    assert failures == sorted(failures)
    page.click("#breakdown th[data-key='user_id']")
    expect(page.locator("#breakdown th[data-key='user_id']")).to_have_attribute(
        "aria-sort", "ascending")
    names = [r[0] for r in table(page)]
    assert names == sorted(names)
    assert view(page)["sort"] == ["user_id"]

    # Tags: a request with two tags counts under both; one without under "(no tag)".
    page.select_option("#group", "tag")
    expect(page.locator("#breakdown thead th").first).to_have_text("Tag")
    tags = Counter(t for e in month for t in (e.get("tags") or [None]))
    shown = {r[0]: int(number(r[1])) for r in table(page)}
    assert shown == {("(no tag)" if k is None else k): v for k, v in tags.items()}

    # Clicking a model filters the whole page to it; the chip removes the filter.
    page.select_option("#group", "model")
    expect(page.locator("#breakdown thead th").first).to_have_text("Model")
    page.click("#breakdown tbody tr[data-key='claude-3-5-sonnet']")
    claude = within(events, now - timedelta(days=30), now + timedelta(hours=1),
                    model="claude-3-5-sonnet")
    expect(page.locator("#total-requests")).to_have_text(n(len(claude)))
    assert view(page)["model"] == ["claude-3-5-sonnet"]
    expect(page.locator("#breakdown tbody tr")).to_have_count(1)
    # Unpriced models are marked, not shown as $0.
    page.click(".chip button")
    expect(page.locator("#breakdown tbody tr[data-key='house-finetune-v2'] td.unpriced")).to_have_text(
        "unpriced")
    expect(page.locator("#card-total-cost .sub")).to_contain_text("unpriced: house-finetune-v2")
    # A filter typed by hand.
    page.select_option("#filter-dim", "tag")
    page.fill("#filter-value", "eval")
    page.click("#add-filter button[type=submit]")
    tagged = within(events, now - timedelta(days=30), now + timedelta(hours=1), tag="eval")
    expect(page.locator("#total-requests")).to_have_text(n(len(tagged)))
    page.close()


def test_drill_down_into_a_user_and_a_session(browser, live):
    server, events, now = live
    page = open_page(browser, server, "#range=30d&group=user_id")
    page.click("#breakdown tbody tr[data-key='carol']")
    expect(page.locator("#view-name")).to_have_text("User carol")
    month = within(events, now - timedelta(days=30), now + timedelta(hours=1), user_id="carol")
    expect(page.locator("#total-requests")).to_have_text(n(len(month)))
    sessions = Counter(e["session_id"] for e in month)
    expect(page.locator("#breakdown tbody tr")).to_have_count(len(sessions))
    assert view(page)["user"] == ["carol"]

    # The session with a failure in it opens its own view.
    sid = next(e["session_id"] for e in month if e["type"] == "LLM_REQUEST_FAILED")
    page.click(f"#breakdown tbody tr[data-key='{sid}']")
    expect(page.locator("#view-name")).to_have_text(f"Session {sid}")
    mine = [e for e in events if e["session_id"] == sid]
    finished = terminal(mine)
    expect(page.locator("#total-requests")).to_have_text(n(len(finished)))
    requests = {e["request_id"] for e in mine}
    expect(page.locator("#requests tbody tr")).to_have_count(len(requests))
    rows = table(page, "#requests")
    # Newest first, by the time of their last event.
    latest = {}
    for e in mine:
        latest[e["request_id"]] = max(latest.get(e["request_id"], ""), e["timestamp"])
    assert [r[1] for r in rows] == sorted(requests, key=lambda r: latest[r], reverse=True)
    bad = next(e for e in finished if e["type"] == "LLM_REQUEST_FAILED")
    row = page.locator(f"#requests tbody tr[data-request='{bad['request_id']}']")
    expect(row).to_have_attribute("data-status", "failed")
    expect(row).to_contain_text(bad["error_type"])
    good = next(e for e in finished if e["type"] == "LLM_REQUEST_COMPLETED")
    cells = page.locator(f"#requests tbody tr[data-request='{good['request_id']}'] td")
    assert cells.nth(6).inner_text() == n(good["cached_prompt_tokens"])
    assert cells.nth(7).inner_text() == n(good["cache_write_prompt_tokens"])
    expect(page.locator("#timeline rect.span")).to_have_count(len(requests))
    page.locator("#timeline rect.span").first.hover()
    expect(page.locator("#tooltip")).to_contain_text(re.compile(r"r\d+ · "))
    page.click("a.back")
    expect(page.locator("#view-title")).to_be_hidden()
    expect(page.locator("#breakdown-panel")).to_be_visible()
    page.close()


def test_download_csv_of_the_table_in_view(browser, live, tmp_path):
    server, events, now = live
    page = open_page(browser, server, "#range=7d&group=provider")
    # Four providers, and the requests sent without one.
    expect(page.locator("#breakdown tbody tr")).to_have_count(5)
    shown = table(page)
    with page.expect_download() as download_info:
        page.click("#csv")
    download = download_info.value
    assert download.suggested_filename.startswith("llm-metrics-by-provider-")
    path = tmp_path / "table.csv"
    download.save_as(path)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [r["provider"] or "(none)" for r in rows] == [r[0] for r in shown]
    assert [int(r["total_requests"]) for r in rows] == [int(number(r[1])) for r in shown]
    assert "total_cost_usd" in rows[0] and "time_to_first_token_ms_p50" in rows[0]
    page.close()


def test_nothing_in_range_says_no_data(browser, live):
    server, _, _ = live
    page = open_page(browser, server, "#range=custom&from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z")
    expect(page.locator("#total-requests")).to_have_text("no data")
    expect(page.locator("#error-rate")).to_have_text("no data")
    expect(page.locator("#latency")).to_have_text("no data")
    expect(page.locator("#requests-chart .empty")).to_have_text("No data in this range")
    expect(page.locator("#latency-hist .empty")).to_have_text("No completed requests in this range")
    expect(page.locator("#breakdown tbody")).to_have_text("No requests in this range")
    assert "0.00%" not in page.locator("#cards").inner_text()
    page.close()


def test_markup_in_ids_is_shown_as_text(browser, live):
    server, _, _ = live
    page = open_page(browser, server, "#range=1h&group=session_id&user_id=mallory")
    row = page.locator("#breakdown tbody tr").filter(has_text="<img src=x")
    expect(row).to_have_count(1)
    row.click()
    expect(page.locator("#view-name")).to_have_text("Session " + HOSTILE)
    assert page.locator("#pwned").count() == 0 and page.evaluate("window.__pwned") is None
    page.close()


def test_readable_on_a_phone(browser, live, tmp_path):
    server, _, _ = live
    page = open_page(browser, server, "#range=24h", viewport={"width": 390, "height": 844},
                     device_scale_factor=2, is_mobile=True, has_touch=True)
    expect(page.locator("#breakdown tbody tr").first).to_be_visible()
    # Nothing wider than the screen but the table, which scrolls inside its panel.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    box = page.locator("#cards .card").first.bounding_box()
    assert box["width"] >= 150
    wrap = page.locator("#breakdown-panel .table-wrap")
    assert wrap.evaluate("w => w.scrollWidth > w.clientWidth")
    chart = page.locator("#requests-chart svg").bounding_box()
    assert chart["width"] <= 390 and chart["width"] > 300
    # Chart text is drawn at its size on the screen, not scaled down with a desktop drawing.
    tick = page.locator("#requests-chart text.y-tick").first.bounding_box()
    assert tick["height"] >= 10
    save_screenshot(page, tmp_path, "dashboard-phone.png", full_page=False)
    page.locator("#requests-chart rect.hit").last.tap()
    expect(page.locator("#tooltip")).to_be_visible()
    page.close()


def test_live_updates_without_a_reload(browser, live):
    server, events, now = live
    page = open_page(browser, server, "#range=15m&group=model")
    before = int(number(page.locator("#total-requests").inner_text()))
    page.evaluate("window.__notReloaded = true")
    at = datetime.now(timezone.utc)
    post(server, [
        {**started("live-session", "a", "mistral-large"), "timestamp": at.isoformat()},
        {**completed("live-session", "a", "mistral-large", duration_ms=2500, prompt_tokens=1600,
                     completion_tokens=900), "timestamp": at.isoformat()},
        {**started("live-session", "b", "mistral-large"), "timestamp": at.isoformat()},
        {**failed("live-session", "b", "mistral-large", error_type="Timeout"),
         "timestamp": at.isoformat()},
    ])
    expect(page.locator("#total-requests")).to_have_text(n(before + 2), timeout=10_000)
    expect(page.locator("#breakdown tbody tr[data-key='mistral-large']")).to_have_count(1)
    assert page.evaluate("window.__notReloaded") is True
    page.close()


def test_the_page_is_confined_by_its_headers(browser, tmp_path):
    """CSP allows only the page's own inline script and style; framing is refused."""
    with ServerProcess(tmp_path / "csp.db") as server:
        with urllib.request.urlopen(server.url + "/dashboard") as reply:
            headers = reply.headers
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "connect-src 'self'" in csp and "unsafe-inline" not in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"

        page = browser.new_page()
        violations: list[str] = []
        page.on("console", lambda m: violations.append(m.text)
                if "Content Security Policy" in m.text else None)
        page.goto(server.url + "/dashboard")
        expect(page.locator("#login")).to_be_visible()  # the script ran under the policy
        # An injected inline script would not run; neither may the page be framed.
        page.evaluate("""() => { const s = document.createElement('script');
            s.textContent = 'window.__injected = 1'; document.body.append(s); }""")
        assert page.evaluate("window.__injected") is None
        assert any("script-src" in v for v in violations)
        assert not [v for v in violations if "style-src" in v]  # the page's own style applies
        page.set_content(f'<iframe src="{server.url}/dashboard"></iframe>')
        page.wait_for_timeout(500)
        framed = page.frames[1]
        assert framed.url.startswith("chrome-error://")  # Chromium refused to frame it
        assert framed.evaluate("document.getElementById('login')") is None
        page.close()


def test_the_service_keeps_answering_after_a_dashboard_is_closed(browser, tmp_path):
    """The stream notices a closed tab at its next keep-alive; the service must not care."""
    from service.stream import HEARTBEAT_S

    with ServerProcess(tmp_path / "closed.db") as server:
        page = open_page(browser, server)
        page.close()
        time.sleep(HEARTBEAT_S + 3)
        began = time.monotonic()
        with urllib.request.urlopen(server.url + "/health", timeout=10) as reply:
            assert reply.status == 200
        assert time.monotonic() - began < 2
