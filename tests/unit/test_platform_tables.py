"""Where the projection's handlers write platform tables: live, or a rebuild's copy."""

from __future__ import annotations

import pytest

from eventfold.projection import platform
from eventfold.readmodel import Target


def test_handlers_write_the_live_table_outside_a_rebuild_and_the_copy_inside() -> None:
    assert platform.table(Target.live("acme"), "webhooks") == "eventfold.webhooks"
    shadow = Target.rebuild("acme", '"ef__rebuild__acme"')
    assert platform.table(shadow, "api_keys") == '"ef__rebuild__acme".platform_api_keys'
    # Another tenant folded live meanwhile still writes the live tables.
    assert platform.table(Target.live("globex"), "api_keys") == "eventfold.api_keys"


def test_only_registered_tables_have_copies() -> None:
    with pytest.raises(ValueError, match="not a platform table"):
        platform.table(Target.live("acme"), "tenants")
    ddl = platform.copies_ddl('"t_acme__rebuild"')
    for name in platform.TABLES:
        assert f'"t_acme__rebuild".platform_{name} (LIKE eventfold.{name}' in ddl
        assert f'"t_acme__rebuild".platform_{name};' in platform.drop_copies_ddl(
            '"t_acme__rebuild"'
        )
