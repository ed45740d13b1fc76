"""The projector: folds the event log into per-tenant PostgreSQL projections.

``processor`` is the Kafka loop that reads a batch, folds it with the kernel's
projection (:mod:`eventfold.projection`) and commits it together with its
partition checkpoints; ``live`` publishes each committed batch's applied
events to the SSE streams, ``hints`` writes Kafka offsets for lag tools.
"""
