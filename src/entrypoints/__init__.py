"""The composition root: the ``eventfold`` command, the app bootstrap and the processor registry.

The only package that knows every part (DESIGN.md, principle 9): it imports the
gateway (``producers``), the read API (``api``), the stream processors
(``consumers``) and the kernel (``eventfold``), and nothing imports it.
"""
