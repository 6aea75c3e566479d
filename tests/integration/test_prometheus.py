"""`GET /metrics`: parsed with prometheus_client's own parsers, checked against the JSON API and
an oracle computed here from the posted events; `promtool check metrics` where it is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from service.app import create_app
from service.prometheus import BUCKETS_S
from tests import factories
from tests.conftest import AUTH
from tests.server import ROOT, ServerProcess, free_port

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "otlp_genai_export.json"

# Boundaries are inclusive (`le`): 10 ms lands in the 0.01 s bucket, 10.5 ms in the next.
DURATIONS_MS = [0, 10, 10.5, 333, 2560, 81920, 81920.5, 120_000]
TTFTS_MS = [0, 10, 10, 41, 300, 900, None, None]


def _events() -> list[dict]:
    events = factories.seed_session("seed")
    for i, (duration, ttft) in enumerate(zip(DURATIONS_MS, TTFTS_MS)):
        extra = {} if ttft is None else {"time_to_first_token_ms": ttft}
        events.append(factories.started("edges", f"e{i}", model="claude-3-5-sonnet", t=i))
        events.append(factories.completed("edges", f"e{i}", model="claude-3-5-sonnet", t=i + 0.5,
                                          duration_ms=duration, prompt_tokens=100 + i,
                                          completion_tokens=10 * i, cached_prompt_tokens=i,
                                          reasoning_tokens=i, **extra))
    events.append(factories.started("edges", "open", model="claude-3-5-sonnet", t=9))
    return events


def _samples(families) -> dict[tuple, float]:
    out = {}
    for family in families:
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples, name, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _oracle_buckets(values_ms: list[float]) -> list[int]:
    return [sum(1 for v in values_ms if v / 1000 <= bound) for bound in BUCKETS_S] + \
        [len(values_ms)]


@pytest.fixture
async def loaded(client):
    r = await client.post("/events", json=_events(), headers=AUTH)
    assert r.status == 201, await r.text()
    r = await client.post("/v1/traces", data=FIXTURE.read_bytes(),
                          headers={**AUTH, "content-type": "application/json"})
    assert r.status == 200
    return client


async def _scrape(client, **headers) -> tuple[str, str]:
    r = await client.get("/metrics", headers={**AUTH, **headers})
    assert r.status == 200
    return r.headers["content-type"], await r.text()


async def test_text_exposition_matches_the_json_api(loaded):
    content_type, text = await _scrape(loaded)
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = _samples(parse_text(text))
    overall = await (await loaded.get("/events/metrics", headers=AUTH)).json()
    by_model = overall["by_model"]
    assert set(by_model) == {"gpt-4", "claude-3-5-sonnet", "gpt-4o", "gpt-4o-2024-08-06",
                             "text-embedding-3-small"}
    for model, m in by_model.items():
        assert _value(samples, "llm_requests_total", model=model, status="ok") == \
            m["successful_requests"]
        assert _value(samples, "llm_requests_total", model=model, status="error") == \
            m["failed_requests"]
        for kind, field in [("prompt", "total_prompt_tokens"),
                            ("completion", "total_completion_tokens"),
                            ("cached_prompt", "cached_prompt_tokens"),
                            ("reasoning", "reasoning_tokens")]:
            assert _value(samples, "llm_tokens_total", model=model, type=kind) == m[field]
        assert _value(samples, "llm_cost_usd_total", model=model) == \
            pytest.approx(m["total_cost_usd"], abs=1e-6)
        if m["successful_requests"]:
            assert _value(samples, "llm_request_duration_seconds_count", model=model) == \
                m["successful_requests"]
            assert _value(samples, "llm_request_duration_seconds_sum", model=model) == \
                pytest.approx(m["total_duration_ms"] / 1000)
    assert by_model["gpt-4"]["total_cost_usd"] > 0  # the seed's GPT-4 prices apply

    assert _value(samples, "llm_sessions_total") == overall["total_sessions"]
    assert _value(samples, "llm_in_flight_requests") == overall["in_flight_requests"] == 1
    assert _value(samples, "llm_stale_requests") == overall["stale_requests"]
    health = await (await loaded.get("/health")).json()
    assert _value(samples, "llm_event_log_position") == health["position"]
    assert _value(samples, "llm_events_appended_total") == health["position"]
    for outcome, count in {"mapped": 4, "tool": 1, "ignored": 1, "rejected": 0}.items():
        assert _value(samples, "llm_otlp_spans_total", outcome=outcome) == count
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)
    # No per-session labels by default: series do not grow with the number of sessions.
    assert not any(dict(labels).get("session_id") for _, labels in samples)


async def test_histograms_use_the_genai_buckets_and_count_like_the_oracle(loaded):
    _, text = await _scrape(loaded)
    families = {f.name: f for f in parse_text(text)}
    for name, values in [("llm_request_duration_seconds", DURATIONS_MS),
                         ("llm_time_to_first_token_seconds", [t for t in TTFTS_MS if t is not None])]:
        buckets = [(s.labels["le"], s.value) for s in families[name].samples
                   if s.name == name + "_bucket" and s.labels["model"] == "claude-3-5-sonnet"]
        assert [le for le, _ in buckets] == [repr(b) for b in BUCKETS_S] + ["+Inf"]
        assert [le for le, _ in buckets][:3] + [le for le, _ in buckets][-2:] == \
            ["0.01", "0.02", "0.04", "81.92", "+Inf"]
        assert [count for _, count in buckets] == _oracle_buckets(values)
        total = next(s.value for s in families[name].samples
                     if s.name == name + "_sum" and s.labels["model"] == "claude-3-5-sonnet")
        assert total == pytest.approx(sum(values) / 1000)
    # The OTLP fixture's TTFTs (0.35 s and 0.2 s) under the response model.
    ttft = [s for s in families["llm_time_to_first_token_seconds"].samples
            if s.labels.get("model") == "gpt-4o-2024-08-06"]
    assert {s.labels["le"]: s.value for s in ttft if s.name.endswith("_bucket")}["0.32"] == 1
    assert next(s.value for s in ttft if s.name.endswith("_count")) == 2


async def test_openmetrics_when_the_accept_header_asks(loaded):
    content_type, text = await _scrape(
        loaded, accept="application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    openmetrics = _samples(parse_openmetrics(text))
    _, plain = await _scrape(loaded)
    classic = _samples(parse_text(plain))
    for key in [("llm_requests_total", (("model", "gpt-4"), ("status", "ok"))),
                ("llm_tokens_total", (("model", "gpt-4"), ("type", "completion"))),
                ("llm_request_duration_seconds_bucket",
                 (("le", "5.12"), ("model", "gpt-4")))]:
        assert openmetrics[key] == classic[key]


async def test_auth_by_default_and_public_when_configured(aiohttp_client, config, loaded,
                                                          tmp_path):
    assert (await loaded.get("/metrics")).status == 401
    open_app = await aiohttp_client(create_app(replace(config, prom_public=True,
                                                       db=str(tmp_path / "public.db"))))
    assert (await open_app.get("/metrics")).status == 200
    assert (await open_app.get("/events/metrics")).status == 401


async def test_models_past_the_cap_add_up_in_other(aiohttp_client, config):
    """Issue 12 (4): many distinct models cannot make /metrics unbounded; the top N by
    requests keep their series, the rest sum into model="other"."""
    client = await aiohttp_client(create_app(replace(config, top_models=3)))
    events = []
    for i in range(10):
        for j in range(i + 1):  # model m9 has the most requests
            events.append(factories.completed(f"s{i}", f"r{j}", model=f"m{i}",
                                              prompt_tokens=1, completion_tokens=1))
    r = await client.post("/events", json=events, headers=AUTH)
    assert r.status == 201
    _, text = await _scrape(client)
    samples = _samples(parse_text(text))
    models = {dict(labels)["model"] for name, labels in samples if name == "llm_requests_total"}
    assert models == {"m9", "m8", "m7", "other"}
    assert _value(samples, "llm_requests_total", model="other", status="ok") == sum(range(1, 8))
    total = sum(v for (name, labels), v in samples.items()
                if name == "llm_requests_total" and dict(labels)["status"] == "ok")
    assert total == len(events)


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian: apt-get install prometheus)")
async def test_promtool_check_metrics_accepts_the_exposition(loaded):
    _, text = await _scrape(loaded)
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # promtool prints lint problems (naming, units, help) without failing: allow none.
    assert done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="prometheus not installed (Debian: apt-get install prometheus)")
def test_a_real_prometheus_scrapes_the_readme_config(tmp_path):
    """Debian's Prometheus server runs the README's scrape config against a live service."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Prometheus"):readme.index("## API docs")]
    scrape = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    with ServerProcess(tmp_path / "events.db", LLM_METRICS_PROM_PUBLIC="1") as service:
        assert service.request("POST", "/events", factories.seed_session())[0] == 201
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(scrape.replace("localhost:8001", f"127.0.0.1:{service.port}")
                          .replace("scrape_interval: 15s", "scrape_interval: 1s"))
        log = open(tmp_path / "prometheus.log", "wb")
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        try:
            query = urllib.parse.quote('llm_requests_total{model="gpt-4",status="ok"}')
            deadline, result = time.monotonic() + 60, []
            while time.monotonic() < deadline and not result:
                time.sleep(0.5)
                assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()
                try:
                    with urllib.request.urlopen(
                            f"http://127.0.0.1:{port}/api/v1/query?query={query}", timeout=5) as r:
                        result = json.loads(r.read())["data"]["result"]
                except OSError:
                    continue
            assert result, (tmp_path / "prometheus.log").read_text()[-3000:]
            assert result[0]["value"][1] == "14"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5) as r:
                target = json.loads(r.read())["data"]["activeTargets"][0]
            assert target["health"] == "up" and target["lastError"] == ""
        finally:
            prometheus.terminate()
            prometheus.wait(15)
            log.close()
