"""Where the projector's handlers write platform tables: live, or a rebuild's copy."""

from __future__ import annotations

import pytest

from consumers.projector import platform
from eventfold.ids import SCHEMA_REDIRECT, tenant_schema


def test_handlers_write_the_live_table_outside_a_rebuild_and_the_copy_inside() -> None:
    assert platform.table("acme", "webhooks") == "eventfold.webhooks"
    assert not platform.in_rebuild("acme")
    token = SCHEMA_REDIRECT.set(("acme", "t_acme__rebuild"))
    try:
        assert platform.in_rebuild("acme")
        assert platform.table("acme", "api_keys") == f"{tenant_schema('acme')}.platform_api_keys"
        # Another tenant's events in the same task still go to the live tables.
        assert platform.table("globex", "api_keys") == "eventfold.api_keys"
    finally:
        SCHEMA_REDIRECT.reset(token)


def test_only_registered_tables_have_copies() -> None:
    with pytest.raises(ValueError, match="not a platform table"):
        platform.table("acme", "tenants")
    ddl = platform.copies_ddl('"t_acme__rebuild"')
    for name in platform.TABLES:
        assert f'"t_acme__rebuild".platform_{name} (LIKE eventfold.{name}' in ddl
        assert f'"t_acme__rebuild".platform_{name};' in platform.drop_copies_ddl(
            '"t_acme__rebuild"'
        )
