"""The README stays true: every setting and every route is documented."""

import re
from pathlib import Path

from service.config import SETTINGS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table():
    missing = [s.env for s in SETTINGS if f"`{s.env}`" not in README]
    assert not missing, f"README's configuration table lacks {missing}"


def test_every_route_is_in_the_readme():
    from service.app import create_app
    from service.config import Config

    app = create_app(Config())
    paths = {re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", r.resource.canonical)
             for r in app.router.routes() if r.method != "HEAD"}
    missing = sorted(p for p in paths if p not in README)
    assert not missing, f"README does not mention {missing}"
