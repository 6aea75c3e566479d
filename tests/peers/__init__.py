"""Virtualenvs for the real instrumentation libraries the OTLP tests drive.

Their pins conflict with ours (and with each other), so each peer gets its own virtualenv under
`~/.cache/llm-metrics/peers/<name>` (`LLM_METRICS_PEERS_DIR`; outside the work tree, so every
clone on a machine, CI's fresh one included, reuses it), built once from
`requirements/<name>.txt` (exact pins) and reused while that file is unchanged. Wheels are kept
in `<peers dir>/wheels`, so a venv removed later is rebuilt from them without the network. A peer that cannot be built is a skip
naming the reason, never a failure of the code under test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
HOME = Path(os.environ.get("LLM_METRICS_PEERS_DIR") or _CACHE / "llm-metrics" / "peers")
WHEELS = HOME / "wheels"
REQUIREMENTS = Path(__file__).with_name("requirements")
DRIVERS = Path(__file__).with_name("drivers")
BUILD_TIMEOUT_S = 900


def _pip(python: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True, timeout=timeout)


def peer_python(name: str) -> Path:
    """The interpreter of peer `name`'s virtualenv, built if missing or out of date."""
    requirements = REQUIREMENTS / f"{name}.txt"
    venv = HOME / name
    python = venv / "bin" / "python"
    stamp = venv / ".requirements-sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    WHEELS.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True,
                   timeout=120)
    # Offline first, from the wheels of an earlier build; the index only for what is missing.
    offline = _pip(python, "install", "--no-index", "--find-links", str(WHEELS),
                   "-r", str(requirements), timeout=BUILD_TIMEOUT_S)
    if offline.returncode != 0:
        # `pip wheel` keeps downloaded wheels and builds the few sdists (cuid) into wheels,
        # so the offline install above works next time.
        fetched = _pip(python, "wheel", "-w", str(WHEELS), "--no-deps", "--find-links",
                       str(WHEELS), "-r", str(requirements), timeout=BUILD_TIMEOUT_S)
        installed = fetched.returncode == 0 and _pip(
            python, "install", "--no-index", "--find-links", str(WHEELS), "-r",
            str(requirements), timeout=BUILD_TIMEOUT_S)
        if not installed or installed.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            reason = (fetched.stderr if fetched.returncode else installed.stderr).strip()
            pytest.skip(f"peer {name!r} could not be installed (no network and no cached "
                        f"wheels?): {reason.splitlines()[-1] if reason else 'pip failed'}")
    stamp.write_text(digest)
    return python


def run_driver(name: str, driver: str, env: dict[str, str], timeout: float = 120
               ) -> subprocess.CompletedProcess:
    """`drivers/run_<driver>.py` in peer `name`'s virtualenv; fails the test if it fails."""
    python = peer_python(name)
    done = subprocess.run([str(python), str(DRIVERS / f"run_{driver}.py")], cwd=DRIVERS,
                          env={"PATH": os.environ.get("PATH", ""), **env}, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"driver {driver} failed:\n{done.stdout}\n{done.stderr}"
    return done
