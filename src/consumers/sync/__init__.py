"""The sync runner: third-party APIs (and their webhooks) as event sources.

The runner only *reads* integration configuration from PostgreSQL and calls
third parties on its schedule; it consumes no events, so events carrying the
replay marker (:mod:`eventfold.replay`) can never trigger an integration call.
"""
