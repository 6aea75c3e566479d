"""Key parsing and matching, roles, and the rate limiter's arithmetic, without HTTP."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from service import auth
from service.auth import KeyRing, Role, allows, is_default_secret, key_digest
from service.config import ConfigError, from_env
from service.limits import TokenBucket


def sha256(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def test_plain_and_hashed_keys_stand_for_the_same_digest():
    hexdigest = hashlib.sha256(b"k1").hexdigest()
    assert key_digest("k1") == key_digest(sha256("k1")) == key_digest("SHA256:" + hexdigest.upper())


def test_keyring_names_roles_and_never_the_key():
    ring = KeyRing("admin-key", ["i1", sha256("i2")], [sha256("r1"), "r2"])
    assert ring.identify("admin-key") == ("admin", frozenset({Role.ADMIN}))
    assert ring.identify("i2") == ("ingest key 2", frozenset({Role.INGEST}))
    assert ring.identify("r1") == ("read key 1", frozenset({Role.READ}))
    assert ring.identify(sha256("i2")) is None  # the configured hash is not itself a key
    assert ring.identify("") is None and ring.identify("\udcff") is None


def test_a_key_in_both_lists_has_both_roles():
    principal = KeyRing("a", ["both"], ["both"]).identify("both")
    assert principal.roles == {Role.INGEST, Role.READ}
    assert allows(principal, "POST", "/events") and allows(principal, "GET", "/events/metrics")


def test_every_configured_key_is_compared_whichever_matches(monkeypatch):
    """Constant time across keys: no early exit that would tell which list a key is in."""
    calls, real = [], hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    ring = KeyRing("admin", [f"i{n}" for n in range(5)], [f"r{n}" for n in range(5)])
    for given in ("admin", "i0", "r4", "nobody"):
        calls.clear()
        ring.identify(given)
        assert len(calls) == 11


@pytest.mark.parametrize("role, method, path, allowed", [
    (Role.INGEST, "POST", "/events", True), (Role.INGEST, "POST", "/v1/traces", True),
    (Role.INGEST, "GET", "/events/metrics", False), (Role.INGEST, "GET", "/events", False),
    (Role.INGEST, "DELETE", "/events", False),
    (Role.READ, "GET", "/events/metrics", True), (Role.READ, "HEAD", "/events", True),
    (Role.READ, "POST", "/events", False), (Role.READ, "POST", "/v1/traces", False),
    (Role.ADMIN, "DELETE", "/anything", True),
])
def test_roles(role, method, path, allowed):
    assert allows(auth.Principal("k", frozenset({role})), method, path) is allowed


def test_default_secret_is_recognised_plain_or_hashed():
    assert is_default_secret("secret") and is_default_secret(sha256("secret"))
    assert not is_default_secret("secret2") and not is_default_secret(sha256("other"))


def test_key_settings_parse_and_errors_never_echo_a_key():
    config = from_env({"LLM_METRICS_INGEST_KEYS": f" a , {sha256('b')},, ",
                       "LLM_METRICS_READ_KEYS": "r"})
    assert config.ingest_keys == ("a", sha256("b")) and config.read_keys == ("r",)
    assert "ingest_keys" not in repr(config) and "secret=" not in repr(config)
    for env, value in [("LLM_METRICS_READ_KEYS", "hunter2,sha256:abc"),
                       ("LLM_METRICS_SECRET", "hunter2,hunter3"),
                       ("LLM_METRICS_SECRET", "sha256:" + "z" * 64)]:
        with pytest.raises(ConfigError) as caught:
            from_env({env: value})
        assert env in str(caught.value) and "hunter" not in str(caught.value)


def test_token_bucket_allows_a_burst_then_the_rate():
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0, 0, 0]
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take() == 0
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 100
    assert [bucket.take() for _ in range(4)][:3] == [0, 0, 0]  # saved up to the burst, no more
