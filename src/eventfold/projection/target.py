"""Where a tenant's events are folded: its live schema, or a rebuild's shadow.

The batch (:mod:`eventfold.projection.batch`) hands a :class:`Target` to every
step of the fold: the read model's SQL runs against ``schema``, and the
handlers of gateway events write the platform tables, or inside a shadow
(``shadow``) the shadow's copies of them (:mod:`eventfold.projection.platform`).
Passed down explicitly: nothing redirects the names behind the fold's back.
"""

from __future__ import annotations

from dataclasses import dataclass

from eventfold import readmodel


@dataclass(frozen=True, slots=True)
class Target:
    """One tenant's fold destination."""

    tenant: str
    #: The quoted schema holding the tenant's tables for this fold.
    schema: str
    #: A rebuild's (or verify's) shadow: the live side (platform tables, the notifier's
    #: position, API key notifications) is left alone.
    shadow: bool = False
    #: The topic the folded events come from (an integration records it).
    topic: str = ""

    @classmethod
    def live(cls, tenant: str, topic: str = "") -> Target:
        """The tenant's live schema."""
        return cls(tenant, readmodel.schema_of(tenant), topic=topic)

    @classmethod
    def rebuild(cls, tenant: str, schema: str, topic: str = "") -> Target:
        """A shadow ``schema`` (quoted) of the tenant, folded by a rebuild or a verify."""
        return cls(tenant, schema, shadow=True, topic=topic)
