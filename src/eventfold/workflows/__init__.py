"""Workflow automation, the pure part shared by the gateway, the projector and the processor.

- :mod:`.definition`: the definition models and their validation (422 with a JSON
  pointer for every error);
- :mod:`.conditions`: the ``when`` / ``if`` operators;
- :mod:`.context`: the run context and its ``{"$from": ptr}`` / ``${ptr}`` references;
- :mod:`.machine`: a run's state and its transitions (each yields the events to log);
- :mod:`.ids`: ids fixed by what caused them (runs, events, Idempotency-Keys, Message-IDs);
- :mod:`.tables`: the tenant tables the projector folds definitions and runs into.

No I/O here: the processor (``consumers.workflows``) does it.
"""
