"""phraseground: image-phrase grounding (mlmcs, dsve, attnreg) with one data layer,
one evaluation harness and one training loop.

``from phraseground import Grounder`` is the user entry point (see ``phraseground.predict``).
"""
import logging as _logging

__version__ = "0.1.0"
__all__ = ["Grounder", "__version__"]

_logging.getLogger(__name__).addHandler(_logging.NullHandler())  # the library logs, never prints


def __getattr__(name: str):
    if name == "Grounder":  # lazy: `import phraseground` stays light
        from .predict import Grounder

        return Grounder
    raise AttributeError(f"module 'phraseground' has no attribute {name!r}")
