"""The shadow-schema redirect a rebuild folds through."""

from __future__ import annotations

import pytest

from eventfold.errors import ValidationFailed
from eventfold.ids import SCHEMA_REDIRECT, shadow_schema_name, tenant_schema


def test_the_redirect_applies_to_its_tenant_only_and_ends_with_its_context() -> None:
    token = SCHEMA_REDIRECT.set(("acme", shadow_schema_name("acme", "rebuild")))
    try:
        assert tenant_schema("acme") == '"ef__rebuild__acme"'
        assert tenant_schema("globex") == '"t_globex"'
    finally:
        SCHEMA_REDIRECT.reset(token)
    assert tenant_schema("acme") == '"t_acme"'


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
