"""The placement policy and the ``EVENTFOLD_DATABASE_SERVERS`` setting."""

from __future__ import annotations

import pytest

from eventfold.placement import choose_server
from eventfold.settings import Settings, SettingsError

B = "postgresql://eventfold:eventfold@127.0.0.1:5433/eventfold"
C = "postgresql://eventfold:eventfold@10.0.0.7/eventfold"


def test_a_new_tenant_goes_to_the_server_with_fewest_tenants() -> None:
    servers = ["main", "b", "c"]
    assert choose_server({"main": 10, "b": 3, "c": 4}, servers) == "b"
    assert choose_server({"main": 10, "b": 4}, servers) == "c"  # none yet counts as 0


def test_a_tie_goes_to_the_first_configured_server() -> None:
    assert choose_server({"main": 2, "b": 2, "c": 2}, ["main", "b", "c"]) == "main"
    assert choose_server({"main": 3, "b": 2, "c": 2}, ["main", "b", "c"]) == "b"


def test_servers_are_named_main_first() -> None:
    settings = Settings.from_env(
        {"EVENTFOLD_MODE": "dev", "EVENTFOLD_DATABASE_SERVERS": f"b={B}, c={C}"}
    )
    assert list(settings.server_urls) == ["main", "b", "c"]
    assert settings.server_urls["c"] == C
    on_b = settings.on_server("b")
    assert on_b.database_url == B
    assert on_b.database_server == "b"
    assert on_b.directory_url == settings.database_url
    assert settings.on_server("main") == settings


@pytest.mark.parametrize(
    "value",
    [f"main={B}", f"b={B},b={C}", B, "b=redis://127.0.0.1/0", f"B!={B}"],
)
def test_a_bad_server_list_is_refused_naming_what_it_accepts(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"EVENTFOLD_MODE": "dev", "EVENTFOLD_DATABASE_SERVERS": value})
    text = str(caught.value)
    assert text.startswith("EVENTFOLD_DATABASE_SERVERS: ")
    assert "name=postgresql://user:password@host:port/db pairs" in text
    assert "not main" in text
