"""phraseground: image-phrase grounding (mlmcs, dsve, attnreg) with one data layer,
one evaluation harness and one training loop."""
__version__ = "0.1.0"
