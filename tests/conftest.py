from __future__ import annotations

import pytest

from events.sqlite_store import SQLiteStore
from service.app import create_app
from service.config import Config

AUTH = {"x-internal-auth": "secret"}


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(db=str(tmp_path / "events.db"))


@pytest.fixture
async def store(tmp_path):
    store = await SQLiteStore.open(tmp_path / "store.db")
    await store.migrate()
    yield store
    await store.close()


@pytest.fixture
async def client(aiohttp_client, config):
    return await aiohttp_client(create_app(config))
