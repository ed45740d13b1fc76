"""The documentation site's machinery: generated reference pages and the example runner.

- :mod:`docsite.reference` renders the reference pages (settings, CLI, metrics,
  event types, errors, HTTP routes) from the code itself: the settings model, the
  CLI's parser, the metrics registry, ``schemas/``, the problem types and the
  OpenAPI registry. Nothing generated is committed.
- :mod:`docsite.hooks` is the MkDocs hook (``mkdocs.yml``) that adds those pages,
  and the repository's Markdown files the site shows (BENCHMARKS.md, the runbook),
  to the build.
- :mod:`docsite.examples` finds the shell examples of the README and the guides,
  and what each documents as its answer; ``tests/integration/test_doc_examples.py``
  runs them against a real ``eventfold run``.
"""
