"""The side-by-side benchmark suite (``make bench``, ``python -m benchmarks.suite``).

One fixed workload (:mod:`.workload`) goes through every phase of Eventfold
(:mod:`.phases`) and through its peers (:mod:`.peers`) on the same PostgreSQL
and Kafka; after each phase :mod:`.check` compares the projection with the fold
of the log; :mod:`.report` writes ``benchmarks/results/<date>.json``, a markdown
summary and PNG plots.
"""
