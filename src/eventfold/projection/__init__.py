"""The projection: the fold of the log into the read model, shared by everything that folds.

The projector (``consumers/projector``) folds each batch it reads from Kafka,
a rebuild (``consumers/rebuild``) folds a tenant's log into a shadow schema,
and a redrive (``eventfold dlq redrive``, ``POST …/dead-letters/redrive``)
folds dead letters again: all three with :mod:`.batch`, which applies
:func:`eventfold.fold.apply` to records, :data:`.handlers.HANDLERS` to gateway
events, and writes through :mod:`eventfold.readmodel` to a :class:`~eventfold.readmodel.Target`.
"""
