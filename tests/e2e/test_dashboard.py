"""The dashboard in real headless Chromium (Debian's `chromium`, driven by Playwright).

Load, log in, post events through the API, and watch the numbers, the table and the charts
change without a reload. The screenshot is saved in the test's tmp dir; set
`LLM_METRICS_SCREENSHOT=docs/dashboard.png` to refresh the README's picture.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

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
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "llama-3-70b"]


def traffic(sessions: int, seed: int = 7) -> list[dict]:
    """Realistic-looking events over the last hour: several models, varied latency, failures."""
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    events = []
    for s in range(sessions):
        sid = f"chat-{s:03d}"
        model = MODELS[s % len(MODELS)]
        for r in range(rng.randint(2, 9)):
            at = now - timedelta(minutes=rng.uniform(1, 60))
            duration = rng.lognormvariate(7, 0.6)
            t0 = at.isoformat()
            t1 = (at + timedelta(milliseconds=duration)).isoformat()
            events.append({**started(sid, f"r{r}", model), "timestamp": t0})
            if rng.random() < 0.08:
                events.append({**failed(sid, f"r{r}", model, error_type="RateLimitError"),
                               "timestamp": t1})
            else:
                events.append({**completed(sid, f"r{r}", model, duration_ms=round(duration, 1),
                                           prompt_tokens=rng.randint(200, 3000),
                                           completion_tokens=rng.randint(50, 900),
                                           has_tool_calls=rng.random() < 0.3,
                                           time_to_first_token_ms=round(
                                               duration * rng.uniform(0.1, 0.4), 1)),
                               "timestamp": t1})
    return events


def post(server, events):
    status, body = server.request("POST", "/events", events)
    assert status == 201, body


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield browser
        browser.close()


def test_dashboard_logs_in_and_updates_live(browser, tmp_path):
    with ServerProcess(tmp_path / "dash.db") as server:
        post(server, traffic(24))
        before = server.request("GET", "/events/metrics")[1]
        page = browser.new_page(viewport={"width": 1360, "height": 980})
        urls: list[str] = []
        page.on("request", lambda r: urls.append(r.url))
        page.goto(server.url + "/dashboard")

        # The page is public; it asks for the secret and refuses a wrong one.
        expect(page.locator("#login")).to_be_visible()
        page.fill("#secret", "not-the-secret")
        page.click("#login button[type=submit]")
        expect(page.locator("#login-error")).to_contain_text("Refused: wrong x-internal-auth")
        page.fill("#secret", SECRET)
        page.click("#login button[type=submit]")
        expect(page.locator("#status")).to_have_text("live")
        expect(page.locator("#total-requests")).to_have_text(f"{before['total_requests']:,}")
        expect(page.locator("#total-sessions")).to_have_text("24")
        expect(page.locator("#ttft")).to_have_text(re.compile(r"^[\d,]+ ms$"))
        expect(page.locator("#model-bars rect[data-model]")).to_have_count(len(MODELS))
        expect(page.locator("#latency-hist rect.hist").first).to_be_attached()
        expect(page.locator("#timeseries rect.series").first).to_be_attached()
        expect(page.locator("#sessions tbody tr")).to_have_count(15)  # one page
        expect(page.locator("#page-info")).to_contain_text("page 1 of 2")

        # New events through the API: numbers, table and charts change without a reload.
        page.evaluate("window.__notReloaded = true")
        hist_before = page.locator("#latency-hist rect.hist").evaluate_all(
            "rs => rs.map(r => r.getAttribute('height')).join()")
        series_before = page.locator("#timeseries path.tokens").get_attribute("d")
        now = datetime.now(timezone.utc).isoformat()
        post(server, [
            {**started("live-session", "a", "mistral-large"), "timestamp": now},
            {**completed("live-session", "a", "mistral-large", duration_ms=60_000,
                         prompt_tokens=16_000, completion_tokens=9_000), "timestamp": now},
            {**started("live-session", "b", "mistral-large"), "timestamp": now},
            {**failed("live-session", "b", "mistral-large", error_type="Timeout"),
             "timestamp": now},
        ])
        expect(page.locator("#total-requests")).to_have_text(f"{before['total_requests'] + 2:,}")
        expect(page.locator("#total-sessions")).to_have_text("25")
        expect(page.locator("#model-bars rect[data-model='mistral-large']")).to_have_count(1)
        expect(page.locator("#sessions tbody tr[data-session='live-session']")).to_have_count(1)
        expect(page.locator("#latency-hist rect.hist")).not_to_have_count(0)
        page.wait_for_function(
            "before => [...document.querySelectorAll('#latency-hist rect.hist')]"
            ".map(r => r.getAttribute('height')).join() !== before", arg=hist_before)
        page.wait_for_function(
            "before => document.querySelector('#timeseries path.tokens').getAttribute('d') "
            "!== before", arg=series_before)
        assert page.evaluate("window.__notReloaded") is True
        error_rate = page.locator("#error-rate").inner_text()
        assert error_rate.endswith("%") and error_rate != "0.00%"

        # Sort, search, paginate.
        page.click("#sessions th[data-key='total_tokens']")
        expect(page.locator("#sessions tbody tr").first).to_have_attribute("data-session",
                                                                           "live-session")
        page.fill("#search", "chat-00")
        expect(page.locator("#sessions tbody tr")).to_have_count(10)
        page.fill("#search", "")
        page.click("#next")
        expect(page.locator("#page-info")).to_contain_text("page 2 of 2")
        expect(page.locator("#sessions tbody tr")).to_have_count(10)
        page.click("#prev")

        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        target = os.environ.get("LLM_METRICS_SCREENSHOT")
        if target:
            shutil.copy(shot, ROOT / target if not Path(target).is_absolute() else target)

        # The secret is kept for the tab (no second prompt on reload), and never in a URL.
        page.reload()
        expect(page.locator("#status")).to_have_text("live")
        expect(page.locator("#login")).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('llm-metrics-secret')") == SECRET
        assert not [u for u in urls if SECRET in u.split("://", 1)[1].replace("127.0.0.1", "")]
        assert any("/events/metrics/stream" in u for u in urls)
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
