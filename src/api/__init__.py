"""The read side: tenant, record and event-history reads over HTTP."""
