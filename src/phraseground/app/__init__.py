"""The application layer: the ``phraseground`` command (``cli``) and the end-to-end ``demo``.

Nothing in the library imports this package; it sits on top of ``predict``, ``train`` and ``eval``.
"""
