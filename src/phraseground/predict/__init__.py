"""Grounding for users: the ``Grounder`` pipeline, the one output record, and the helpers they share.

``from phraseground import Grounder`` is the entry point; the record shape is documented in
``phraseground.predict.records``.
"""
from __future__ import annotations

import re


from ..errors import PhrasegroundError
from ..eval.locate import locate, locate_candidates  # the eval layer's; re-exported here


def parse_bracketed(sentence: str) -> tuple[str, list[tuple[int, int]]]:
    """'[a red star] left of [a blue square]' -> plain text and the word spans of the brackets.

    Without brackets the whole sentence is the one phrase.
    """
    if not sentence.split():
        raise PhrasegroundError("empty phrase: nothing to ground")
    if "[" not in sentence and "]" not in sentence:
        words = sentence.split()
        return " ".join(words), [(0, len(words))]
    words: list[str] = []
    spans: list[tuple[int, int]] = []
    for m in re.finditer(r"\[([^\[\]]*)\]|([^\[\]]+)|([\[\]])", sentence):
        if m.group(3):
            raise PhrasegroundError(f"unbalanced brackets in sentence {sentence!r}")
        chunk = (m.group(1) if m.group(1) is not None else m.group(2)).split()
        if m.group(1) is not None:
            if not chunk:
                raise PhrasegroundError(f"empty phrase [] in sentence {sentence!r}")
            spans.append((len(words), len(words) + len(chunk)))
        words.extend(chunk)
    return " ".join(words), spans


from .grounder import Grounder  # noqa: E402  (needs parse_bracketed above)
from .records import SCORE_DOC, check_record, image_record, json_ready, phrase_record  # noqa: E402

__all__ = ["Grounder", "SCORE_DOC", "check_record", "image_record", "json_ready", "locate", "locate_candidates",
           "parse_bracketed", "phrase_record"]
