"""Train every variant a model's paper ablates and write the table into the README.

    python benchmarks/ablations.py --model mlmcs|dsve|attnreg [--images 2500] [--epochs E]
        [--seeds 0 1] [--variants NAME ...] [--out runs/ablations] [--readme README.md]

Each variant is the model's embedded default config (``configs/<model>_synthetic.yaml``) with
the paper's switch flipped, trained on the synthetic benchmark (``--images``, split 80/4/16 %)
and scored on its test split under ``akbari2019`` (Flickr30k frame), beside the centre baseline
of the same phrases. Results are cached per run (``<out>/<model>/<images>img/<variant>/seed<k>/result.json``),
so an interrupted sweep resumes. The README gets one table per model between
``<!-- ablations:MODEL -->`` markers, with the scale, the seeds, the machine load and the command.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# variant name -> (overrides, the paper's switch, what the paper reports)
VARIANTS: dict[str, dict[str, tuple[list[str], str, str]]] = {
    "mlmcs": {
        "default": ([], "embedded default: ReLU attention, all levels, non-linear mappings, learned word "
                        "embeddings, word + sentence loss", "full model (Table 3 row 1, 67.73 with ELMo)"),
        "softmax": (["model_args.attention=softmax"], "softmax attention over regions",
                    "worse: 'a very negative effect' (rows 2 vs 7)"),
        "middle": (["model_args.level_ablation=middle"], "middle level only", "worse than multi-level (rows 1-2)"),
        "last": (["model_args.level_ablation=last"], "last level only", "worse than multi-level (rows 1-2)"),
        "linear": (["model_args.mapping=linear"], "linear text and visual mappings",
                   "worse: 'significantly degrades' (rows 2, 3, 4, 6)"),
        "bilstm_words": (["model_args.word_layers=[1]"], "trained BiLSTM word features",
                         "worse than ELMo (rows 2, 5); ours compares with learned embeddings, ELMo cannot run here"),
        "words_loss": (["model_args.loss_terms=words"], "word-level loss only",
                       "not a row of Table 3 (the model uses both)"),
        "sentence_loss": (["model_args.loss_terms=sentence"], "sentence-level loss only",
                          "not a row of Table 3 (the model uses both)"),
    },
    "dsve": {
        "default": ([], "embedded default: WELDON max + min, k = 30 of 256, 3 warm-up epochs",
                    "full model (pointing 33.8 on VG with k = 180 of 2400)"),
        "avg_pool": (["model_args.pooling=avg"], "global average pooling", "worse: -1.1 pointing, -5.3 / -4.7 R@1"),
        "max_pool": (["model_args.pooling=max"], "max pooling only", "not reported"),
        "k10": (["model_args.localize_k=10"], "localization k = 10", "k = 180 of 2400 by cross-validation"),
        "k100": (["model_args.localize_k=100"], "localization k = 100", "k = 180 of 2400 by cross-validation"),
        "no_warmup": (["model_args.warmup_epochs=0"], "hardest negatives from the first step (the paper's setting)",
                      "the paper's setting (no warm-up)"),
    },
    "attnreg": {
        "default": ([], "embedded default: image + text attention, area penalty, sigmoid box, 1 - GIoU, "
                        "attention_init 0.05", "full model (Table 3: 37.26 on ReferIt)"),
        "no_text_attention": (["model_args.attention=image"], "without text attention", "worse: 35.55 (-1.71)"),
        "no_attention": (["model_args.attention=none"], "without text and image attention", "worse: 29.43 (-7.83)"),
        "no_penalty": (["model_args.area_penalty=false"], "without the area penalty (λ2 = 0)", "worse: 35.41 (-0.85)"),
        "lambda1_0": (["model_args.lambda_se=0"], "λ1 = 0 (no squared-error term)", "not reported (λ1 = 1e-4)"),
        "lambda1_x10": (["model_args.lambda_se=1.0e-3"], "λ1 = 1e-3", "not reported (λ1 = 1e-4)"),
        "lambda2_x10": (["model_args.lambda_area=1.0e-4"], "λ2 = 1e-4", "not reported (λ2 = 1e-5)"),
        "paper_exact": (["model_args.box_output=relu", "model_args.iou_loss=iou", "model_args.attention_init=0"],
                        "the paper's exact setting: ReLU box, 1 - IoU, default init", "the paper's setting"),
        "relu_iou_init": (["model_args.box_output=relu", "model_args.iou_loss=iou"],
                          "ReLU box, 1 - IoU, attention_init 0.05", "(diagnostic)"),
        "sigmoid_iou": (["model_args.iou_loss=iou"], "sigmoid box, 1 - IoU, attention_init 0.05", "(diagnostic)"),
    },
}


def run_variant(model: str, variant: str, seed: int, images: int, epochs: int | None, out: Path) -> dict:
    """Train one variant (unless its result is cached) and score it on the test split."""
    import torch

    from phraseground.eval.baselines import evaluate_baseline
    from phraseground.eval.grounding import evaluate_grounding
    from phraseground.models.checkpoint import model_from_checkpoint
    from phraseground.train.config import default_config
    from phraseground.train.data import box_frame_of, build_feature_set, ensure_synthetic, load_split
    from phraseground.train.loop import train

    run_dir = out / model / f"{images}img" / variant / f"seed{seed}"
    cached = run_dir / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    overrides = list(VARIANTS[model][variant][0]) + [f"data.synthetic_images={images}", f"train.seed={seed}"]
    if epochs is not None:
        base = default_config(model)
        scale = epochs / base.train.epochs
        overrides += [f"train.epochs={epochs}",
                      f"train.lr_milestones={[max(1, round(m * scale)) for m in base.train.lr_milestones]}"]
        if model == "dsve" and variant != "no_warmup":
            overrides.append(f"model_args.warmup_epochs={max(1, round(base.model_args.get('warmup_epochs', 3) * scale))}")
    cfg = default_config(model, overrides)
    cfg.data.root = str(ensure_synthetic(cfg.data, out / "data" / f"{images}img"))
    t0 = time.time()
    summary = train(cfg, run_dir / "run", progress=False)
    best, _ = model_from_checkpoint(run_dir / "run" / "best.pt", model)
    test = load_split(cfg.data, "test")
    frame = box_frame_of(cfg.data)
    fs = build_feature_set(best, test)
    rep = evaluate_grounding(best, fs, "akbari2019", box_frame=frame)
    centre = evaluate_baseline(test, "center", "akbari2019", box_frame=frame)
    result = {
        "model": model, "variant": variant, "seed": seed, "images": images, "epochs": cfg.train.epochs,
        "overrides": overrides, "pointing": rep["pointing"]["accuracy"], "box": rep["box"]["accuracy"],
        "attention_correctness": rep["attention_correctness"]["attention_correctness"],
        "n_phrases": rep["pointing"]["n_evaluated"], "centre": centre["accuracy"],
        "pointing_box_centre": rep.get("pointing_box_centre", {}).get("accuracy"),
        "train_seconds": summary["train_seconds"], "wall_seconds": time.time() - t0,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "load": os.getloadavg()[0],
    }
    cached.write_text(json.dumps(result, indent=1))
    return result


def _fmt(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ({' / '.join(f'{v:.3f}' for v in vals)})"


def table(model: str, results: dict[str, list[dict]], command: str) -> str:
    """The README block of one model."""
    first = next(iter(r for rs in results.values() for r in rs))
    box_name = "box acc. (regressed, IoU ≥ 0.5)" if model == "attnreg" else "box acc. (heat2bbox, IoU ≥ 0.5)"
    lines = [
        f"`{command}` — {first['images']} synthetic images (test split: {first['n_phrases']} phrases scored), "
        f"{first['epochs']} epochs, seeds {sorted({r['seed'] for rs in results.values() for r in rs})}, "
        f"`OMP_NUM_THREADS=1`, torch {first['torch']}, CPU, 2 cores shared with other jobs "
        f"(load {min(r['load'] for rs in results.values() for r in rs):.1f}–"
        f"{max(r['load'] for rs in results.values() for r in rs):.1f}). Centre baseline {first['centre']:.3f}. "
        "Several seeds: mean (each seed).",
        "",
        f"| variant | switch | pointing (`akbari2019`) | {box_name} | Δ pointing vs default | paper reports | same direction? |",
        "|---|---|---|---|---|---|---|",
    ]
    base = statistics.mean(r["pointing"] for r in results.get("default", [])) if results.get("default") else None
    key = "box" if model == "attnreg" else "pointing"
    base_key = statistics.mean(r[key] for r in results["default"]) if results.get("default") else None
    for variant, rs in results.items():
        _, switch, paper = VARIANTS[model][variant]
        p = statistics.mean(r["pointing"] for r in rs)
        delta = "–" if variant == "default" or base is None else f"{p - base:+.3f}"
        same = "–"
        if variant != "default" and base_key is not None and paper.startswith("worse"):
            d = statistics.mean(r[key] for r in rs) - base_key
            same = "yes" if d < 0 else "no (equal)" if d == 0 else "no"
        pointing = _fmt([r["pointing"] for r in rs])
        if model == "attnreg" and all(r["attention_correctness"] == 0 for r in rs):
            pointing += " (attention map all zero: every phrase a miss)"
        lines.append(f"| `{variant}` | {switch} | {pointing} | {_fmt([r['box'] for r in rs])} "
                     f"| {delta} | {paper} | {same} |")
    return "\n".join(lines)


def write_readme(readme: Path, model: str, block: str) -> None:
    text = readme.read_text()
    start, end = f"<!-- ablations:{model} -->", f"<!-- /ablations:{model} -->"
    new = f"{start}\n{block}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + new + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n{new}\n"
    readme.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, choices=sorted(VARIANTS))
    ap.add_argument("--images", type=int, default=2500, help="synthetic benchmark size (default: the embedded default)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's); milestones scale")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=None, help="only these variants (default: all)")
    ap.add_argument("--out", default="runs/ablations")
    ap.add_argument("--readme", default="README.md", help="write the table here ('' : print only)")
    ap.add_argument("--from-cache", action="store_true",
                    help="train nothing: build the table from every cached result of this scale (all seeds)")
    args = ap.parse_args()
    if args.from_cache:
        results = {}
        for variant in VARIANTS[args.model]:
            for f in sorted((Path(args.out) / args.model / f"{args.images}img" / variant).glob("seed*/result.json")):
                results.setdefault(variant, []).append(json.loads(f.read_text()))
        if not results:
            sys.exit(f"ablations.py: no cached result under {args.out}/{args.model}/{args.images}img")
        first = next(iter(results.values()))[0]
        command = (f"python benchmarks/ablations.py --model {args.model} --images {args.images} --epochs {first['epochs']} "
                   f"--seeds {' '.join(str(x) for x in sorted({r['seed'] for rs in results.values() for r in rs}))}")
        block = table(args.model, results, command)
        print(block)
        if args.readme:
            write_readme(Path(args.readme), args.model, block)
        return
    variants = args.variants or list(VARIANTS[args.model])
    unknown = [v for v in variants if v not in VARIANTS[args.model]]
    if unknown:
        sys.exit(f"ablations.py: unknown variant(s) {unknown}; known: {list(VARIANTS[args.model])}")
    results: dict[str, list[dict]] = {}
    for variant in variants:
        for seed in args.seeds:
            r = run_variant(args.model, variant, seed, args.images, args.epochs, Path(args.out))
            results.setdefault(variant, []).append(r)
            print(f"{args.model} {variant} seed {seed}: pointing {r['pointing']:.4f} box {r['box']:.4f} "
                  f"({r['train_seconds']:.0f} s training)", flush=True)
    command = "python benchmarks/ablations.py " + " ".join(sys.argv[1:])
    block = table(args.model, results, command)
    print(block)
    if args.readme:
        write_readme(Path(args.readme), args.model, block)


if __name__ == "__main__":
    main()
