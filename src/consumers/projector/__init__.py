"""The projector: folds the event log into per-tenant PostgreSQL projections.

``fold`` is the pure logic (one record's state through its events), ``store``
the SQL of one tenant schema, ``processor`` the Kafka loop that commits each
batch together with its partition checkpoints.
"""
