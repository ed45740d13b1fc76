"""Shadow schemas: a rebuild names the schema it folds into; nothing is redirected."""

from __future__ import annotations

import pytest

from eventfold import readmodel
from eventfold.errors import ValidationFailed
from eventfold.ids import shadow_schema_name, tenant_schema
from eventfold.readmodel import Target


def test_a_rebuild_names_its_shadow_and_the_live_schema_stays_the_live_one() -> None:
    shadow = readmodel.shadow_schema("acme", "rebuild")
    assert shadow == '"ef__rebuild__acme"'
    target = Target.rebuild("acme", shadow)
    assert target.schema == shadow
    assert target.shadow
    assert Target.live("acme").schema == tenant_schema("acme") == '"t_acme"'
    ddl = readmodel.tenant_ddl("acme", shadow)
    assert f"CREATE TABLE IF NOT EXISTS {shadow}.records" in ddl
    assert f"GRANT USAGE ON SCHEMA {shadow} TO" in ddl  # the grants follow the schema
    assert '"t_acme"' not in ddl


def test_internal_names_are_out_of_every_tenants_reach() -> None:
    # "acme__verify" was a valid tenant id whose live schema a verify of "acme" dropped.
    assert shadow_schema_name("acme", "verify") == "ef__verify__acme"
    assert not shadow_schema_name("acme", "verify").startswith("t_")
    with pytest.raises(ValidationFailed):
        tenant_schema("acme__verify")


def test_shadow_names_are_built_from_valid_parts_only() -> None:
    with pytest.raises(ValidationFailed):
        shadow_schema_name('x"; DROP', "rebuild")
    with pytest.raises(ValueError, match="alphanumeric"):
        shadow_schema_name("acme", "a-b")
