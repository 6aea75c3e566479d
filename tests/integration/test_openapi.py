"""`GET /openapi.json` and `GET /docs`: complete, valid, generated from the service's own types,
and true of the live service according to Schemathesis."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
import schemathesis

from events.schema import LlmRequestCompleted
from projections import views
from service import openapi
from service.app import create_app
from service.errors import ErrorBody
from tests import factories
from tests.server import ROOT, SECRET, ServerProcess

SCHEMATHESIS_CONFIG = Path(__file__).resolve().parent.parent / "fixtures" / "schemathesis.toml"
# Examples per operation: bounded so the whole run stays around ten seconds on two cores.
EXAMPLES = int(os.environ.get("LLM_METRICS_SCHEMATHESIS_EXAMPLES", "10"))


def test_every_route_has_an_entry_and_every_entry_a_route(config):
    app = create_app(config)
    routes = openapi.routes(app)
    assert openapi.undocumented(app) == [], (
        "routes without an OpenAPI entry: add them to service.openapi.OPERATIONS")
    assert sorted(set(openapi.OPERATIONS) - set(routes)) == [], "entries for routes that do not exist"
    assert ("POST", "/v1/traces") in routes and ("GET", "/metrics") in routes


def test_a_new_route_cannot_be_forgotten(config):
    app = create_app(config)

    async def handler(request):
        raise AssertionError

    app.router.add_get("/brand/new/{thing}", handler)
    assert openapi.undocumented(app) == [("GET", "/brand/new/{thing}")]
    # It is still in the document, marked, with its path parameter: never silently missing.
    entry = openapi.build(app)["paths"]["/brand/new/{thing}"]["get"]
    assert "undocumented" in entry["summary"]
    assert entry["parameters"][0]["name"] == "thing"


async def test_document_is_valid_openapi_31_generated_from_the_service_types(client):
    r = await client.get("/openapi.json")  # public: no key needed
    assert r.status == 200 and r.content_type == "application/json"
    doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(doc).validate()  # against the OpenAPI 3.1 meta-schema

    # The component schemas are msgspec's, from the very Structs the handlers use.
    _, generated = msgspec.json.schema_components(
        [LlmRequestCompleted, views.SessionMetrics, ErrorBody],
        ref_template="#/components/schemas/{name}")
    for name, schema in generated.items():
        assert doc["components"]["schemas"][name] == schema
    post_events = doc["paths"]["/events"]["post"]
    body = post_events["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/LlmRequestCompleted"} in str_refs(body)
    assert post_events["responses"]["201"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/Ingested"}
    session = doc["paths"]["/events/metrics/session/{session_id}"]["get"]
    assert session["responses"]["404"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/ErrorBody"}
    assert session["security"] == [{"internalAuth": []}]
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert doc["components"]["securitySchemes"]["internalAuth"] == {
        "type": "apiKey", "in": "header", "name": "x-internal-auth"}
    limit = next(p for p in doc["paths"]["/events/metrics/sessions"]["get"]["parameters"]
                 if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000}


def str_refs(schema) -> list[dict]:
    """Every `$ref` object inside a schema."""
    found = []
    if isinstance(schema, dict):
        if "$ref" in schema:
            found.append(schema)
        for value in schema.values():
            found.extend(str_refs(value))
    elif isinstance(schema, list):
        for value in schema:
            found.extend(str_refs(value))
    return found


async def test_docs_page_is_self_contained(client):
    r = await client.get("/docs")
    assert r.status == 200 and r.content_type == "text/html"
    html = await r.text()
    assert 'fetch("openapi.json")' in html
    # No CDN: nothing is loaded from another origin.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert not re.search(r"""(import|fetch)\(\s*["'](https?:)?//""", html)


def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path):
    binary = Path(sys.executable).with_name("schemathesis")
    with ServerProcess(tmp_path / "fuzz.db") as server:
        status, _ = server.request("POST", "/events", factories.seed_session("fuzz-session"))
        assert status == 201
        started = time.monotonic()
        run = subprocess.run(
            [str(binary), "--config-file", str(SCHEMATHESIS_CONFIG), "run",
             server.url + "/openapi.json", "--max-examples", str(EXAMPLES), "--seed", "20261127",
             "--no-color", "--phases", "coverage,fuzzing",
             # A fuzzed alert rule would make the server POST webhooks to random hosts: tests
             # send traffic to this machine only. Rule validation has its own tests.
             "--exclude-name", "POST /alerts/rules"],
            cwd=tmp_path, env={**os.environ, "LLM_METRICS_SECRET": SECRET},
            capture_output=True, text=True, timeout=300)
        report = run.stdout[-6000:] + run.stderr[-2000:]
        assert run.returncode == 0, report
        # No crash: the same process still answers. (The fuzzer may have erased the session
        # through DELETE /events/sessions/{id}: then it is rightly gone.)
        assert server.proc.poll() is None
        assert server.request("GET", "/events/metrics")[0] == 200
        assert server.request("GET", "/events/metrics/session/fuzz-session")[0] in (200, 404)
        print(f"schemathesis: {EXAMPLES} examples per operation in "
              f"{time.monotonic() - started:.1f} s")


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.slow
def test_docs_page_renders_every_operation_in_a_real_browser(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api",
                                     reason="Playwright is not installed (pip install -e '.[test]')")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does)")
    with ServerProcess(tmp_path / "docs.db") as server, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        outside: list[str] = []
        page.on("request", lambda r: outside.append(r.url)
                if not r.url.startswith(server.url) else None)
        page.goto(server.url + "/docs")
        page.wait_for_selector("section.op")
        status, doc = server.request("GET", "/openapi.json")
        expected = sum(len(methods) for methods in doc["paths"].values())
        assert page.locator("section.op").count() == expected
        text = page.inner_text("body")
        assert "POST" in text and "/v1/traces" in text and "LlmRequestCompleted" in text
        page.screenshot(path=str(tmp_path / "docs.png"), full_page=False)
        if os.environ.get("LLM_METRICS_SCREENSHOT_DOCS"):
            shutil.copy(tmp_path / "docs.png", ROOT / os.environ["LLM_METRICS_SCREENSHOT_DOCS"])
        browser.close()
        assert outside == []
