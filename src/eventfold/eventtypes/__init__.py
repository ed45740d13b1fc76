"""Tenant-defined event types: names, schemas, compatibility, upcasting, projections.

The pure rules live here (no I/O but :mod:`.definitions`, which reads the
projected versions): the gateway validates events with them, the projector
folds custom events with them, and the read side upcasts what it serves.
A type's versions are facts of the log (``eventtype.*`` events), projected into
the platform table ``eventfold.event_types``; a version never changes once
registered, so anything derived from one may be cached for good.
"""
