"""The ``phraseground`` command: synth, prepare, features, train, evaluate, ground, demo, serve.

Bad input (files, options, checkpoints) ends with one ``phraseground: error: ...`` line on
stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import PhrasegroundError
from ..io import safe_filename, write_json


def _parse_options(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise PhrasegroundError(f"option {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def cmd_synth(args: argparse.Namespace) -> None:
    from ..data.synthetic import generate_benchmark

    if args.images < 3 or args.size < 48:
        raise PhrasegroundError("--images must be >= 3 and --size >= 48")
    t = time.time()
    counts = generate_benchmark(Path(args.out_dir), args.images, args.seed, args.size, progress=not args.quiet)
    dt = time.time() - t
    print(f"wrote {sum(counts.values())} images ({', '.join(f'{k} {v}' for k, v in counts.items())}) to {args.out_dir} "
          f"in {dt:.1f} s ({sum(counts.values()) / max(dt, 1e-9):.0f} images/s)")


def cmd_prepare(args: argparse.Namespace) -> None:
    from ..data.index import prepare_dataset

    report = prepare_dataset(args.dataset, Path(args.root), Path(args.out), split=args.split,
                             progress=not args.quiet and sys.stderr.isatty(), **_parse_options(args.option))
    print(report.summary())


def cmd_train(args: argparse.Namespace) -> None:
    from ..train.config import load_config
    from ..train.loop import train

    overrides = list(args.set)
    if args.model:
        if args.config:
            named = load_config(args.config, overrides).model
            if named != args.model:
                raise PhrasegroundError(f"--model {args.model} but the config {args.config} trains {named}")
        overrides.insert(0, f"model={args.model}")
    if args.max_image_pixels is not None:  # recorded in the run's config.yaml
        overrides.append(f"data.max_image_pixels={args.max_image_pixels}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    cfg = load_config(args.config, overrides)
    summary = train(cfg, Path(args.out), resume=args.resume, progress=not args.quiet)
    best = summary["best_score"]
    print(f"trained {cfg.model}: {summary['epochs']} epochs, {summary['steps']} steps, "
          f"{summary['train_seconds']:.0f} s; best validation score {best:.4f}; checkpoints in {args.out}")


def cmd_features(args: argparse.Namespace) -> None:
    from ..device import resolve_device
    from ..feature_store import human_bytes
    from ..train.config import load_config
    from ..train.data import ensure_synthetic, features_for, load_split, store_root

    cfg = load_config(args.config, args.set)
    if args.out:
        cfg.data.feature_store = str(args.out)
    if args.workers is not None:
        cfg.data.workers = args.workers
    cfg.data.feature_rebuild = cfg.data.feature_rebuild or args.rebuild
    if cfg.data.max_image_pixels and args.max_image_pixels is None:
        from ..data.images import set_max_pixels

        set_max_pixels(cfg.data.max_image_pixels)
    if cfg.data.features == "memory":
        cfg.data.features = "store"
    if not cfg.data.root:  # the embedded default: the benchmark is generated beside the store
        if not args.out:
            raise PhrasegroundError("the config has no data.root (the embedded benchmark): give --out DIR")
        cfg.data.root = str(ensure_synthetic(cfg.data, Path(args.out) / "synthetic", not args.quiet))
    spec = cfg.model_args.feature_spec()
    device = resolve_device(args.device)
    splits = args.split or [s for s in (cfg.data.train_split, cfg.data.val_split) if s]
    for split in splits:
        samples = load_split(cfg.data, split)
        t = time.time()
        store = features_for(spec, samples, cfg.data, split, device, args.batch_size or cfg.train.feature_batch,
                             progress=not args.quiet, quiet=args.quiet)
        print(f"{split}: {len(store)} images, {human_bytes(store.nbytes)} in {store.path} ({time.time() - t:.1f} s)")
    print(f"feature store root: {store_root(cfg.data)}")


def _samples_for(data: str, split: str, fmt: str):
    from ..train.config import DataConfig
    from ..train.data import load_split

    return load_split(DataConfig(root=data, format=fmt), split)


def _box_frame(args: argparse.Namespace) -> str:
    if args.box_frame != "auto":
        return args.box_frame
    from ..train.config import DataConfig
    from ..train.data import box_frame_of

    return box_frame_of(DataConfig(root=args.data, format=_data_format(args)))


def _data_format(args: argparse.Namespace) -> str:
    """--format, with ``--data photos`` or a ``.jsonl`` meaning the photo cases."""
    if args.format == "flickr30k" and (args.data == "photos" or str(args.data).endswith(".jsonl")):
        return "photos"
    return args.format


def cmd_evaluate(args: argparse.Namespace) -> None:
    fmt = _data_format(args)
    samples = _samples_for(args.data, args.split, fmt)
    if not samples:
        raise PhrasegroundError(f"{args.data}: split {args.split!r} has no images")
    frame = _box_frame(args)
    if args.predictions:
        if args.checkpoint or args.baseline:
            raise PhrasegroundError("--predictions scores a file: give neither --checkpoint nor --baseline")
        from ..eval.predictions import score_predictions

        result = {"predictions": str(args.predictions), "data": str(args.data), "split": args.split, "box_frame": frame,
                  "grounding": score_predictions(samples, Path(args.predictions), args.protocol, frame)}
    elif args.baseline and args.baseline != "cam":
        if args.checkpoint:
            raise PhrasegroundError("give either --checkpoint or --baseline, not both")
        if args.report:
            raise PhrasegroundError("--report needs --checkpoint (a baseline has no overlays)")
        from ..eval.baselines import evaluate_baseline

        result = evaluate_baseline(samples, args.baseline, args.protocol, seed=args.seed, box_frame=frame)
        result = {"data": str(args.data), "split": args.split, "box_frame": frame, **result}
    else:
        if args.baseline and args.checkpoint:
            raise PhrasegroundError("give either --checkpoint or --baseline, not both")
        if not args.checkpoint and not args.baseline:
            raise PhrasegroundError("give --checkpoint CKPT (or --baseline center|random|cam)")
        from ..train.config import DataConfig
        from ..device import resolve_device
        from ..train.data import features_for

        device = resolve_device(args.device)
        if args.baseline == "cam":  # a model that needs no training: class activation maps
            from ..models.registry import create_model

            model, name = create_model("cam"), "cam"
        else:
            from ..models.checkpoint import model_from_checkpoint

            model, ckpt = model_from_checkpoint(Path(args.checkpoint))
            name = ckpt["model"]
        model.to(device)
        data = DataConfig(root=str(args.data), format=fmt, feature_store=args.store or "", feature_rebuild=args.rebuild,
                          features="memory" if fmt == "photos" and not args.store else "store")  # photos: 9 images
        extractor = None
        if args.baseline != "cam" and "backbone" in ckpt:  # a backbone fine-tuned online
            from ..features import FeatureExtractor

            extractor = FeatureExtractor.for_checkpoint(model, ckpt, device)
        fs = features_for(model, samples, data, args.split, device, progress=not args.quiet, quiet=args.quiet,
                          extractor=extractor)
        result = {"model": name, "checkpoint": args.checkpoint and str(args.checkpoint), "data": str(args.data),
                  "split": args.split, "box_frame": frame}
        if args.baseline:
            result["baseline"] = args.baseline
        if args.task in ("grounding", "all"):
            from ..eval.grounding import evaluate_grounding

            writer = None
            if args.predictions_out:
                from ..eval.predictions import PredictionsWriter

                writer = PredictionsWriter(Path(args.predictions_out), args.protocol, heatmaps=args.heatmaps)
            from .report import RecordCollector, on_phrases

            collected = RecordCollector(args.protocol) if args.report else None
            result["grounding"] = evaluate_grounding(model, fs, args.protocol, progress=not args.quiet, box_frame=frame,
                                                     on_phrase=on_phrases(writer, collected))
            if writer is not None:
                writer.close()
                result["predictions_out"] = str(args.predictions_out)
            if args.report:
                from .report import evaluation_report

                if args.baseline:
                    raise PhrasegroundError("--report needs --checkpoint (a baseline has no training log)")
                evaluation_report(Path(args.report), collected, fs.samples, result["grounding"], ckpt["model"],
                                  Path(args.checkpoint), seed=args.seed, box_frame=frame)
                print(f"report: {Path(args.report) / 'report.html'}, {Path(args.report) / 'report.md'}")
        from ..models.base import supports_retrieval

        if args.task == "retrieval" or (args.task == "all" and supports_retrieval(model)):
            from ..eval.retrieval_run import evaluate_retrieval

            n = len(fs.samples)
            folds = args.fold_size if args.fold_size and n % args.fold_size == 0 else None
            if folds is None and args.fold_size:
                print(f"note: {n} images do not split into folds of {args.fold_size}; "
                      f"fold-averaged retrieval not computed (use --fold-size D with D dividing {n})", file=sys.stderr)
            result["retrieval"] = evaluate_retrieval(model, fs, fold_size=folds)
            result["retrieval"]["fold_size"] = folds
    if args.json:
        write_json(Path(args.json), result)
    _print_eval(result)


def _print_eval(result: dict) -> None:
    point = result.get("grounding", {}).get("pointing", result if "accuracy" in result else None)
    if point:
        acc = point["accuracy"]
        print(f"pointing ({point['protocol']}): accuracy {acc if acc is None else round(acc, 4)}, "
              f"hits {point['hits']}, misses {point['misses']}, skipped {point['skipped']}")
    box = result.get("grounding", {}).get("box")
    if box:
        print(f"box accuracy (IoU >= 0.5): {box['accuracy']}")
    if "retrieval" in result:
        print("retrieval:", json.dumps(result["retrieval"].get("full", result["retrieval"]))[:400])


def cmd_ground(args: argparse.Namespace) -> int:
    from .ground import run_ground

    return run_ground(args)


def cmd_export(args: argparse.Namespace) -> None:
    from ..predict.export import export_checkpoint

    config = export_checkpoint(Path(args.checkpoint), Path(args.out_dir))
    files = sorted(p.name for p in Path(args.out_dir).iterdir() if not p.name.startswith("."))
    print(f"exported {config['model']} (backbone {config['backbone']['name']}, weights id "
          f"{config['backbone']['weights_id']}) to {args.out_dir}: {', '.join(files)}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    report = run_demo(Path(args.out), model=args.model, images=args.images, epochs=args.epochs, device=args.device,
                      progress=not args.quiet, overrides=args.set)
    print(f"\n{report['model']} on the synthetic test split ({report['n_phrases']} phrases, {report['protocol']}): "
          f"pointing accuracy {report['pointing_accuracy']:.4f} (centre baseline {report['baselines']['center']:.4f}, "
          f"random {report['baselines']['random']:.4f}), box accuracy {report['box_accuracy']:.4f}; "
          f"trained in {report['train_seconds']:.0f} s, total {report['total_seconds']:.0f} s")
    print(f"report: {Path(args.out) / 'report.html'}, {Path(args.out) / 'report.md'}, {Path(args.out) / 'report.json'}")


def _image_limit(s: argparse.ArgumentParser) -> None:
    from ..data.images import DEFAULT_MAX_PIXELS, ENV_MAX_PIXELS

    s.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                   help=f"refuse images of more than N pixels, checked on the file header before decoding "
                        f"(decompression bombs; default {DEFAULT_MAX_PIXELS}, or ${ENV_MAX_PIXELS}; for train also "
                        f"the config key data.max_image_pixels)")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (unless the help already states one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text:
            return text
        d = action.default
        if isinstance(action, argparse._StoreTrueAction):
            d = "off"
        elif isinstance(action, argparse._StoreFalseAction):
            d = "on"
        elif isinstance(action, argparse._CountAction):
            d = d or 0
        elif d is None or d == []:
            d = "none"
        return f"{text} (default: {str(d).replace('%', '%%')})"


#: commands that run a model and take --device
DEVICE_COMMANDS = ("train", "features", "evaluate", "ground", "demo", "serve")


def _common_options(s: argparse.ArgumentParser, name: str) -> None:
    """-q/-v on every command, --device on those that run a model, defaults in every help."""
    s.formatter_class = HelpFormatter
    have = s._option_string_actions
    if "--quiet" not in have:
        s.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no info messages (errors "
                                                                  "and the result lines only)")
    if "--verbose" not in have:
        s.add_argument("-v", "--verbose", action="count", default=0, help="debug log messages")
    if name in DEVICE_COMMANDS and "--device" not in have:
        s.add_argument("--device", default=None if name == "train" else "auto",
                       help="auto (CUDA when present; cuda:LOCAL_RANK under torchrun), cpu, cuda or cuda:N"
                            + (" (default: the config's train.device, auto)" if name == "train" else ""))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message (tests swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


_LOG_HANDLER: logging.Handler | None = None


def _setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """The library logs through ``logging`` (logger ``phraseground``); the command shows it on stderr."""
    global _LOG_HANDLER
    logger = logging.getLogger("phraseground")
    if _LOG_HANDLER is not None:
        logger.removeHandler(_LOG_HANDLER)
    _LOG_HANDLER = _StderrHandler()
    _LOG_HANDLER.setFormatter(logging.Formatter("phraseground: %(levelname)s: %(message)s"
                                                if verbose else "phraseground: %(message)s"))
    logger.addHandler(_LOG_HANDLER)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def _teardown_logging() -> None:
    """Detach the command's handler (``main`` called in-process leaves the library silent again)."""
    global _LOG_HANDLER
    logger = logging.getLogger("phraseground")
    if _LOG_HANDLER is not None:
        logger.removeHandler(_LOG_HANDLER)
        _LOG_HANDLER = None
    logger.setLevel(logging.NOTSET)


# what each layout of `prepare` expects under ROOT (the readers' module docs have the details)
DATASET_FILES = {
    "flickr30k": ["Sentences/<id>.txt", "Annotations/<id>.xml", "train.txt, val.txt, test.txt",
                  "images/<id>.jpg (or flickr30k-images/, flickr30k_images/)"],
    "coco": ["annotations/captions_{train,val}<year>.json", "{train,val}<year>/<file_name>"],
    "coco-karpathy": ["dataset_coco.json (Karpathy's split file)", "<filepath>/<filename> (train2014/, val2014/)"],
    "referit": ["<dataset>/refs(<split_by>).p (or .json)", "<dataset>/instances.json",
                "images/saiapr_tc-12/ (refclef; refcoco*: images/mscoco/images/train2014/)"],
    "referit-hu": ["ReferitData/RealGames.txt or CannedGames.txt (or data/metadata/referit_*_dict.json)",
                   "data/split/referit_<split>_imlist.txt", "ImageCLEF/images/<image>.jpg",
                   "ImageCLEF/mask/<image>_<region>.mat"],
    "vg": ["image_data.json", "region_descriptions.json", "VG_100K/<id>.jpg, VG_100K_2/<id>.jpg"],
}
DATASET_SPLITS = {"flickr30k": "train, val, test", "coco": "train, val", "coco-karpathy": "train, val, test, restval",
                  "referit": "train, val, test, ... (as in the refs)", "referit-hu": "train, val, test, trainval, all",
                  "vg": "train, test (Akbari et al. 2019)"}


def _datasets_epilog() -> str:
    import inspect

    from ..data.index import DATASETS

    lines = ["datasets (ROOT = --root):"]
    for name, reader in DATASETS.items():
        lines.append(f"  {name}")
        for f in DATASET_FILES.get(name, ["see the reader's documentation"]):
            lines.append(f"      ROOT/{f}")
        if name in DATASET_SPLITS:
            lines.append(f"      --split: {DATASET_SPLITS[name]}")
        opts = [f"{p.name}={p.default!s}" for p in inspect.signature(reader).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
        lines.append(f"      --option keys: {', '.join(opts) if opts else 'none'}")
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> None:
    from .serve import DEFAULT_MAX_PIXELS, Limits, default_slots, run_server

    if not 0 < args.port < 65536:
        raise PhrasegroundError(f"--port must be in 1..65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_phrases < 1 or args.max_phrase_chars < 1 or args.batch_size < 1:
        raise PhrasegroundError("--max-upload-mb, --max-phrases, --max-phrase-chars and --batch-size must be positive")
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_image_pixels or DEFAULT_MAX_PIXELS,
                    max_phrases=args.max_phrases, max_phrase_chars=args.max_phrase_chars)
    slots = default_slots(args.checkpoint, device=args.device, batch_size=args.batch_size)
    run_server(slots, args.host, args.port, limits, log_level="warning" if args.quiet else "info")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="phraseground", description="Image-phrase grounding: mlmcs, dsve, attnreg.",
                                formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"phraseground {__version__}", help="print the version")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write the synthetic benchmark in Flickr30k Entities format")
    s.add_argument("out_dir", help="folder to write the benchmark into")
    s.add_argument("--images", type=int, default=2500, help="number of images (split 80 / 4 / 16 %% train / val / test)")
    s.add_argument("--seed", type=int, default=0, help="everything is a function of the seed")
    s.add_argument("--size", type=int, default=128, help="image side in pixels")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("prepare", help="validate a dataset once and write its index",
                       description="Read a dataset, validate it once and write a compact index that train and "
                                   "evaluate read with data.format: index.",
                       epilog=_datasets_epilog())
    s.add_argument("dataset", help="the dataset's layout (listed below with the files each expects)")
    s.add_argument("--root", required=True, help="the dataset folder (ROOT below)")
    s.add_argument("--out", required=True, help="index file (.json or .json.gz); missing folders are created")
    s.add_argument("--split", default=None, help="the reader's split name (listed below); none = every image")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a reader option of the dataset (the keys are listed below; repeatable)")
    _image_limit(s)
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("train", help="train a model from a YAML config")
    s.add_argument("--config", default=None,
                   help="YAML config (default: the model's documented default, configs/<model>_synthetic.yaml)")
    s.add_argument("--model", default=None, help="registered model (default: the config's, else mlmcs)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. train.epochs=3 (repeatable)")
    s.add_argument("--out", required=True, help="run folder (created with its missing parents; must not be a file)")
    s.add_argument("--resume", action="store_true", help="continue from RUN/last.pt exactly")
    _image_limit(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("features", help="extract a config's frozen-backbone features into the disk store")
    s.add_argument("--config", default=None, help="YAML config (default: the built-in defaults)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. data.root=/data/pg/coco")
    s.add_argument("--split", action="append", default=None, help="split(s) to extract (default: the config's train and val splits)")
    s.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    s.add_argument("--out", default=None, metavar="DIR", help="store root (default: data.feature_store, else 'features' beside the data)")
    s.add_argument("--batch-size", type=int, default=None, help="images per backbone forward (default: train.feature_batch)")
    s.add_argument("--workers", type=int, default=None, help="DataLoader workers decoding images (default: 0 on CPU, up to 8 on CUDA)")
    s.add_argument("--rebuild", action="store_true", help="re-extract corrupted or truncated shards")
    _image_limit(s)
    s.set_defaults(func=cmd_features)

    s = sub.add_parser("evaluate", help="evaluate a checkpoint or a baseline on a dataset split")
    s.add_argument("--checkpoint", help="a training checkpoint to evaluate")
    s.add_argument("--baseline", choices=["center", "random", "cam"],
                   help="evaluate a baseline instead of a checkpoint: center, random point, or cam (class activation "
                        "maps of the ImageNet classes nearest to the phrase; no training)")
    s.add_argument("--data", required=True, help="Flickr30k Entities directory (or index folder with --format index; "
                                                 "'photos' for the packaged real photographs)")
    s.add_argument("--format", default="flickr30k", choices=["flickr30k", "index", "photos"],
                   help="how --data is laid out (photos: the real photographs with hand-drawn boxes; --data photos "
                        "for the packaged cases, or a photos.jsonl)")
    s.add_argument("--split", default="test", help="the split to evaluate")
    s.add_argument("--protocol", default="akbari2019", choices=["akbari2019", "engilberge2018", "tolerance15"],
                   help="pointing protocol (see the README's table)")
    s.add_argument("--box-frame", default="auto",
                   choices=["auto", "flickr30k", "referit", "coco", "visual_genome", "xyxy"],
                   help="akbari2019: the boxes as MultiGrounding's loader had them (auto: from the dataset)")
    s.add_argument("--predictions-out", metavar="FILE",
                   help="write every phrase's point, box, hit and skip reason here (JSON lines, one image a line)")
    s.add_argument("--heatmaps", action="store_true",
                   help="with --predictions-out: also write each phrase's heatmap (.npz per image, named in the records)")
    s.add_argument("--predictions", metavar="FILE",
                   help="score this predictions file (what --predictions-out writes, or any system's) instead of a model")
    s.add_argument("--task", default="grounding", choices=["grounding", "retrieval", "all"],
                   help="what to measure (retrieval: models with a joint embedding; all: grounding, and "
                        "retrieval when the model has one)")
    s.add_argument("--fold-size", type=int, default=1000, help="images per fold for the 1k-fold retrieval average")
    s.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    s.add_argument("--store", default=None, metavar="DIR",
                   help="feature store root (default: a folder 'features' beside --data); missing features are extracted")
    s.add_argument("--rebuild", action="store_true", help="re-extract corrupted or truncated store shards")
    s.add_argument("--json", help="write the full report to this file (missing folders are created)")
    s.add_argument("--report", metavar="DIR", help="write report.html and report.md (plots, overlay grids) into DIR")
    _image_limit(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("ground", help="ground phrases in an image, or in a batch of images, with a trained model")
    from .ground import add_arguments

    add_arguments(s)
    _image_limit(s)
    s.set_defaults(func=cmd_ground)

    s = sub.add_parser("serve", help="a web page and a JSON API (POST /ground) over a model (extra [web])")
    s.add_argument("--checkpoint", default=None,
                   help="a training checkpoint (default: cam, which needs none, and the demo's runs/demo/run/best.pt "
                        "when it exists)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on")
    s.add_argument("--batch-size", type=int, default=8, help="images per model batch")
    s.add_argument("--max-upload-mb", type=float, default=20, help="largest upload in MB (default 20)")
    s.add_argument("--max-phrases", type=int, default=16, help="phrases per request (default 16)")
    s.add_argument("--max-phrase-chars", type=int, default=300, help="characters per phrase (default 300)")
    s.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                   help="refuse uploads of more than N pixels, checked on the header before decoding (default 40000000)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("export", help="write a checkpoint's portable form: model.safetensors + config.json "
                                      "(+ vocab.json), for Grounder.from_pretrained / ground --pretrained")
    s.add_argument("checkpoint", help="a training checkpoint (best.pt / last.pt)")
    s.add_argument("out_dir", help="folder to write (created with its missing parents; its files are replaced)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("demo", help="end to end on the synthetic benchmark: generate, train, evaluate, report")
    s.add_argument("--out", default="runs/demo", help="folder for the benchmark, the run, the report and overlays")
    s.add_argument("--model", default="mlmcs", help="registered model to train")
    s.add_argument("--images", type=int, default=None, help="benchmark size (default: the model's demo config)")
    s.add_argument("--epochs", type=int, default=None, help="training epochs (default: the model's demo config)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    _image_limit(s)
    s.set_defaults(func=cmd_demo)
    for name, command in sub.choices.items():
        _common_options(command, name)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        if getattr(args, "max_image_pixels", None) is not None:
            from ..data.images import set_max_pixels

            set_max_pixels(args.max_image_pixels)
        rc = args.func(args)
    except PhrasegroundError as e:
        print(f"phraseground: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output folder made outside atomic_write: read-only, full, not a folder
        from ..io import output_error

        err = output_error(e)
        if err is None:
            raise
        print(f"phraseground: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("phraseground: interrupted", file=sys.stderr)
        return 130
    finally:
        _teardown_logging()
    return int(rc or 0)


if __name__ == "__main__":  # python -m phraseground.app.cli
    sys.exit(main())
