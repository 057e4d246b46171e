"""The ``xmr`` command: data, features, train, eval, demo."""
from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path

EXAMPLES = """examples:
  xmr demo                                   # synthetic data, small VSE++, R@K table (< 5 min)
  xmr index build --images ~/photos --out idx && xmr search idx "a dog on a beach"   # the shipped model
  xmr data flickr8k                          # check a dataset and show its splits
  xmr features flickr8k                      # EfficientNet-Lite0 features into runs/cache
  xmr train --model vsepp --preset cpu --data flickr8k --out runs/vsepp-f8k
  xmr eval runs/vsepp-f8k --split test --json results/vsepp-f8k-test.json
  xmr eval runs/mmca-f8k --two-step 20 100 --first-stage runs/vsepp-f8k   # shortlist, then re-rank
  xmr eval-embeddings img.npy cap.npy --captions-per-image 5 --folds 5 --json coco1k.json   # any model's vectors
  xmr train --model cmmn --preset cpu --data synthetic-scenes --out runs/cmmn-scenes   # label-based, any modalities
  xmr eval runs/cmmn-scenes --json results/cmmn-scenes.json       # mAP, mAP@500, P@n, real and binary
  xmr index build runs/vsepp-f8k --data flickr8k --split test --out runs/f8k-index
  xmr search runs/f8k-index "a dog runs on the beach"      # or: --image photo.jpg
  xmr serve runs/f8k-index                                 # API + search page on 127.0.0.1:8000
dataset specs: synthetic | flickr8k[:PATH] | karpathy:JSON[,images=DIR] |
               coco:DIR_OR_captions_NAME.json[,images=DIR] | precomputed:DIR |
               csv:DIR_OR_SPLIT.csv[,images=DIR,sep=tab|comma,img_key=filepath,caption_key=caption]
               (options after commas, e.g. synthetic,seed=1,n_train=500; any kind: captions_per_image=5)
               coco: DIR holds captions_{train,val}2017.json (or annotations/ under it); images=DIR is
               one image folder or one with train2017/ val2017/; dev and test are both the val file
"""


def _overrides(pairs: list[str]) -> dict:
    from xmr.options import key_values

    return key_values(pairs, lambda pair: SystemExit(f"--set {pair!r}: expected KEY=VALUE"))


def cmd_data(args) -> int:
    from xmr.data import open_split

    opened, bad = [], 0
    for split in args.splits:
        s = open_split(args.data, split)
        labels = f", {s.labels.shape[1]} label classes" if s.labels is not None else ""
        print(f"{split}: {s.n_images} images, {len(s.captions)} captions ({s.captions_per_image}/image){labels}")
        for c in s.captions[: args.show]:
            print(f"   {c}")
        if not args.no_images:
            bad += _check_images(s)
        opened.append(s)
    _check_split_overlap(opened)
    return 1 if bad else 0


def _check_images(split) -> int:
    """Open (decode) every image file of a split; print each unreadable one; return their count."""
    from xmr.data.base import DataError

    if split.image_paths is None:
        return 0  # precomputed features or generated images
    bad = []
    for i in range(split.n_images):
        try:
            split.load_image(i)
        except DataError as e:
            bad.append(str(e))
    for message in bad[:5]:
        print(f"xmr: error: {message}", file=sys.stderr)
    if bad:
        print(f"xmr: error: {split.name}: {len(bad)} of {split.n_images} images cannot be read"
              f"{' (first 5 shown)' if len(bad) > 5 else ''}; fix them or use --on-bad-input skip when "
              "extracting features", file=sys.stderr)
    else:
        print(f"   all {split.n_images} images open")
    return len(bad)


def _check_split_overlap(splits) -> None:
    """Training images must not be in dev or test (refused); dev == test is warned about."""
    from xmr.data.base import DataError, check_disjoint

    by_name = {s.name: s for s in splits}
    train = by_name.get("train")
    for other in ("dev", "test"):
        if train is not None and other in by_name:
            check_disjoint(train, by_name[other])
    if "dev" in by_name and "test" in by_name:
        try:
            check_disjoint(by_name["dev"], by_name["test"])
        except DataError as e:
            print(f"warning: {e} (model selection on dev then sees the test images)", file=sys.stderr)


def cmd_features(args) -> int:
    from xmr.data import DatasetSpec, open_split
    from xmr.features.image import check_runtime, extract_parts, extractor_parts
    from xmr.features.store import feature_root

    if args.runtime is not None:
        check_runtime(args.runtime)
    spec = DatasetSpec.parse(args.data)
    root = partial(feature_root, spec, cache=Path(args.cache))
    stats = [s for split in args.splits
             for s in extract_parts(open_split(spec, split), root, args.extractor, "pooled", args.batch_size,
                                    progress=not args.quiet, on_bad_input=args.on_bad_input, runtime=args.runtime)[2]]
    for s in stats:
        print(json.dumps(s))
    print(f"features in {', '.join(str(root(p.name)) for p in extractor_parts(args.extractor))}")
    if args.json:
        Path(args.json).write_text(json.dumps({"data": args.data, "extractor": args.extractor,
                                               "splits": stats}, indent=1))
    return 0


def _train_config(args):
    from xmr.train import TrainConfig

    return TrainConfig(model=args.model, preset=args.preset, data=args.data, extractor=args.extractor,
                       out=args.out, seed=args.seed, overrides=_overrides(args.set), cache=args.cache,
                       progress=not args.quiet, on_bad_input=args.on_bad_input)


def cmd_train(args) -> int:
    from xmr.train import train

    _check_resume(args)
    args.model, args.data, args.seed = (args.model or "vsepp", args.data or "synthetic",
                                        0 if args.seed is None else args.seed)
    train(_train_config(args), resume=args.resume)
    return 0


def _check_resume(args) -> None:
    """``--resume`` continues the run in --out with its own settings: a --data, --model or --seed
    given now that differs from the saved one is refused, not silently ignored."""
    from xmr.errors import TrainingError

    saved_file = Path(args.out) / "config.json"
    if not (args.resume and (Path(args.out) / "last.json").is_file() and saved_file.is_file()):
        return
    try:
        saved = json.loads(saved_file.read_text(encoding="utf-8-sig"))
    except ValueError as e:
        raise TrainingError(f"{saved_file}: not valid JSON ({e}); cannot resume this run") from None
    if not isinstance(saved, dict):
        raise TrainingError(f"{saved_file}: not a run config (a JSON {type(saved).__name__}); cannot resume")
    for key in ("data", "model", "seed"):
        given = getattr(args, key)
        if given is not None and key in saved and given != saved[key]:
            raise TrainingError(f"--resume: {args.out} was trained with --{key} {saved[key]}, not {given}; "
                                f"drop --{key} to continue it, or train a new run with another --out")


def cmd_eval(args) -> int:
    from xmr import checkpoint
    from xmr.models import get_entry
    from xmr.pretrained import resolve_run

    args.run_name, args.run = args.run, str(resolve_run(args.run))  # the JSON records the name given
    stem = Path(args.run) / args.checkpoint
    try:
        learns_from = get_entry(checkpoint.read_meta(stem).get("model")).cls.learns_from
    except KeyError as e:  # a checkpoint naming no registered model
        raise checkpoint.CheckpointError(f"{stem.with_suffix('.json')}: {e.args[0]}") from None
    if (args.protocol or learns_from) == "labels":
        if learns_from == "pairs":
            return _eval_pair_model_labels(args)
        if args.set:
            raise SystemExit("xmr eval: --set applies to pair evaluation (R@K), not to the label protocol")
        return _eval_labels(args)
    return _eval_pairs(args)


def _eval_pair_model_labels(args) -> int:
    """A pair model's run on the label protocol: its --split's images and captions as queries
    against the training split (``xmr.eval.label_pairs``); a pairwise model ranks by two-step
    retrieval at --two-step K (default 100)."""
    from xmr.data.keyword_labels import with_labels
    from xmr.eval.label_pairs import label_protocol
    from xmr.eval.labelled import format_labelled
    from xmr.runs import open_run

    if args.no_exhaustive or args.kshot or args.first_stage or args.folds != 1 or args.plot:
        raise SystemExit("xmr eval --protocol labels: --two-step K and --set apply; --no-exhaustive, --kshot, "
                         "--first-stage, --folds and --plot do not")
    if args.two_step and len(args.two_step) > 1:
        raise SystemExit("xmr eval --protocol labels: one --two-step K")
    k = args.two_step[0] if args.two_step else 100
    trained = open_run(args.run, args.checkpoint, _overrides(args.set))
    data_name = args.data or trained.meta["data"]
    split = {s: trained.data(s, args.data, Path(args.cache), on_bad_input=args.on_bad_input)
             for s in (args.split, "train")}
    labels = {s: with_labels(d.split).labels for s, d in split.items()}  # of the images it kept
    result = label_protocol(trained.model, split[args.split], split["train"], labels[args.split], labels["train"],
                            k=k, map_at=args.map_at, progress=True)
    print(f"{args.split} queries, database = training split of the target modality, ranked by {result['ranking']}")
    print(format_labelled(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"run": args.run_name, "checkpoint": args.checkpoint, "data": data_name,
                                               "epoch": trained.meta.get("epoch"), "split": args.split,
                                               "model_overrides": _overrides(args.set), **result}, indent=1))
    return 0


def _eval_labels(args) -> int:
    """A label model's run: mAP over every query -> target modality pair of its labelled set."""
    from xmr import checkpoint
    from xmr.eval.labelled import evaluate_labelled, format_labelled
    from xmr.features.labelled import labelled_set
    from xmr.models import create_model
    from xmr.runs import checked_model_kwargs

    stem = Path(args.run) / args.checkpoint
    meta = checkpoint.read_meta(stem)
    model = create_model(meta["model"], **checked_model_kwargs(meta, stem))
    checkpoint.load(stem, model)
    model.eval()
    config = json.loads((Path(args.run) / "config.json").read_text())
    data = labelled_set(args.data or config["data"], Path(args.cache), config["extractor"], True, config["seed"])
    result = evaluate_labelled(model, data, args.split, map_at=args.map_at)
    print(f"{args.split}, {model.bits}-bit codes, database = training split of the target modality")
    print(format_labelled(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"run": args.run_name, "checkpoint": args.checkpoint,
                                               "data": args.data or config["data"], "epoch": meta.get("epoch"),
                                               **result}, indent=1))
    return 0


def _eval_pairs(args) -> int:
    """R@K on a pair split, exhaustive and/or two-step, with k-shot subsets on request."""
    from xmr.eval.evaluate import evaluate, format_table
    from xmr.runs import open_run

    if args.folds < 1:
        raise SystemExit(f"xmr eval: --folds {args.folds}: need a whole number >= 1 (5 for COCO 1K)")
    overrides = _overrides(args.set)
    trained = open_run(args.run, args.checkpoint, overrides)
    model, meta = trained.model, trained.meta
    data = trained.data(args.split, args.data, Path(args.cache), on_bad_input=args.on_bad_input)
    _check_width(meta, data, args)
    if args.no_exhaustive and not args.two_step:
        raise SystemExit("xmr eval: --no-exhaustive needs --two-step K")
    if args.kshot and (args.no_exhaustive or args.folds != 1):
        raise SystemExit("xmr eval: --kshot needs the exhaustive evaluation of the whole split (--folds 1)")
    result = {}
    if not args.no_exhaustive:
        result = evaluate(model, data, folds=args.folds, progress=True)
        print(format_table(result))
    if args.kshot:  # word frequencies from the training split of the data the run was trained on
        from xmr.data import open_split
        from xmr.eval.kshot import format_kshot, kshot_evaluate

        result["kshot"] = kshot_evaluate(model, data, open_split(meta["data"], "train").captions,
                                         args.kshot, result)
        print(format_kshot(result["kshot"]))
    if args.two_step:
        from xmr.eval.two_step import first_stage_embeddings, k_curve, plot_k_curve

        if args.folds != 1:
            raise SystemExit("xmr eval: --two-step evaluates the whole split (--folds 1)")
        first = None
        if args.first_stage:
            first = first_stage_embeddings(args.first_stage, args.data or meta["data"], args.split,
                                           Path(args.cache), data)
        result["two_step"] = k_curve(model, data, args.two_step, first, progress=True)
        result["first_stage_run"] = args.first_stage or "own embedding"
        for row in result["two_step"]:
            secs = row["seconds"]["first_stage"] + row["seconds"]["rerank"]
            print(f"two-step K={row['k']:<5d} R@1 {row['i2t']['r1']:5.1f} / {row['t2i']['r1']:5.1f}  "
                  f"rsum {row['rsum']:6.1f}  ({secs:.1f}s; first stage alone rsum {row['first_stage']['rsum']:.1f})")
        if args.plot:
            plot_k_curve(result["two_step"], result if "i2t" in result else None, Path(args.plot),
                         f"{meta['model']} on {args.split}")
    if args.json:
        result = {"run": args.run_name, "checkpoint": args.checkpoint, "data": args.data or meta["data"],
                  "epoch": meta.get("epoch"), "split": args.split, "folds": args.folds,
                  "model_overrides": overrides, **result}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def _check_width(meta: dict, data, args) -> None:
    """The run's image feature width must be the data's (another extractor or dataset otherwise)."""
    from xmr.data.base import DataError

    want = meta.get("model_kwargs", {}).get("image_dim")
    if want is not None and data.features.dtype.kind == "f" and data.features.shape[-1] != want:
        raise DataError(f"{args.run} was trained on {want}-d image features but {args.data or meta['data']} "
                        f"split {args.split!r} has {data.features.shape[-1]}-d ones; evaluate it on data from "
                        "the same extractor")


def cmd_eval_embeddings(args) -> int:
    """R@K of precomputed image and caption embeddings, with xmr's ranking and protocols."""
    from xmr.eval.embeddings import (assignment_from_count, dedupe_repeated_images, evaluate_embeddings,
                                     load_assignment, load_vectors)
    from xmr.eval.evaluate import format_table

    if (args.caption_image is None) == (args.captions_per_image is None):
        raise SystemExit("xmr eval-embeddings: give exactly one of --caption-image FILE, --captions-per-image N")
    images, captions = load_vectors(args.images, "image"), load_vectors(args.captions, "caption")
    if args.caption_image:
        caption_image = load_assignment(args.caption_image, len(captions), len(images))
    else:
        images = dedupe_repeated_images(images, len(captions), args.captions_per_image, args.images)
        caption_image = assignment_from_count(len(images), len(captions), args.captions_per_image)
    result = evaluate_embeddings(images, captions, caption_image, args.score, args.folds)
    print(format_table(result))
    if args.json:
        result = {"task": "zeroshot_retrieval", "dataset": args.dataset, "model": args.model,
                  "images": str(args.images), "captions": str(args.captions), "folds": args.folds, **result}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def cmd_index(args) -> int:
    from xmr.search.index import Collection, build_index, describe

    if args.action == "info":
        if args.target is None:
            raise SystemExit("xmr index info: name the index folder")
        print(describe(args.target))
        return 0
    given = [(k, v) for k, v in (("split", args.data), ("images", args.images), ("sentences", args.sentences)) if v]
    if len(given) != 1:
        raise SystemExit("xmr index build: give exactly one of --data SPEC, --images DIR, --sentences FILE")
    kind, source = given[0]
    info = build_index(args.target, Collection(kind, source, args.split), args.out, args.kind, Path(args.cache),
                       progress=not args.quiet, on_bad_input=args.on_bad_input)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once
        print(describe(args.out))
    return 0 if info else 1


def cmd_search(args) -> int:
    from xmr.search.engine import Searcher

    searcher = Searcher(args.index, shortlist=args.shortlist, text_runtime=args.text_runtime, cache=args.cache)
    if args.image:
        from xmr.data.images import load_rgb

        hits = searcher.search_image(load_rgb(args.image), args.k, args.binary)
    else:
        hits = searcher.search_text(args.query or "", args.k, args.binary)
    if args.json:
        print(json.dumps([h.as_dict() for h in hits], indent=1))
        return 0
    for h in hits:
        what = h.caption if h.caption is not None else h.image_id
        extra = f"   (image {h.image_id})" if h.caption is not None and h.image_id else ""
        print(f"{h.rank:3d}  {h.score:8.4f}  {h.match or '':6s}  {what}{extra}")
    if hits and hits[0].match == "none":
        print("no real match: the best result scores below 95% of the model's top hits on its own dev split; "
              "the collection may hold nothing like this", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from xmr.search.server import serve

    serve(args.index, args.host, args.port, args.batch_window_ms, args.text_runtime, args.cache)
    return 0


def cmd_export(args) -> int:
    from xmr.pretrained import export_run

    meta = export_run(args.run, args.out, args.checkpoint, Path(args.cache))
    print(f"{args.out}: {meta['model']} ({meta['extractor']}), float16 weights, {meta['bytes'] / 1e6:.1f} MB")
    return 0


def cmd_demo(args) -> int:
    from xmr.demo import run_demo

    return run_demo(Path(args.out), Path(args.cache), quiet=args.quiet)


def _common_options() -> argparse.ArgumentParser:
    """Options every command but ``data`` takes: the feature cache, CPU threads, bad images."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache", default="runs/cache", help="feature cache folder (default runs/cache)")
    common.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    common.add_argument("--on-bad-input", choices=["fail", "skip"], default="fail",
                        help="an unreadable image: stop with a message naming it (fail), or leave it and its "
                             "captions out and report how many (skip)")
    return common


def _data_options(d: argparse.ArgumentParser) -> None:
    d.add_argument("data", help="dataset spec, e.g. flickr8k or synthetic")
    d.add_argument("--splits", nargs="+", default=["train", "dev", "test"])
    d.add_argument("--show", type=int, default=3, help="captions to print per split")
    d.add_argument("--no-images", action="store_true", help="do not open (decode) every image file")


def _features_options(f: argparse.ArgumentParser) -> None:
    f.add_argument("data", help="dataset spec")
    f.add_argument("--splits", nargs="+", default=["train", "dev", "test"])
    f.add_argument("--extractor", default="efficientnet-lite0-224",
                   help="efficientnet-lite0-224 (7x7 grid), efficientnet-lite0-448 (14x14 grid) or "
                   "efficientnet-lite2-260 (9x9 grid); any backbone (lite0, lite1, lite2) at 32 to 1024 "
                   "pixels; several joined with + serve their features side by side")
    f.add_argument("--batch-size", type=int, default=32)
    f.add_argument("--runtime", default=None,
                   help="what runs the network: onnx (ONNX Runtime, faster on CPU) or torch (TorchScript); "
                   "default: the one the cache folder was extracted with, onnx for a new folder")
    f.add_argument("--json", help="write throughput stats here")
    f.add_argument("--quiet", action="store_true", help="no progress bars")


def _train_options(t: argparse.ArgumentParser) -> None:
    from xmr.models import get_entry, model_names

    t.add_argument("--model", default=None, choices=model_names(), help="default vsepp")
    presets = "; ".join(f"{m}: {', '.join(get_entry(m).presets)}" for m in model_names())
    t.add_argument("--preset", default="tiny", help=f"named setting of the model ({presets}); 'paper' is "
                   "the paper's, 'cpu' trains on 2 cores, 'tiny' is for synthetic data")
    t.add_argument("--data", default=None, help="dataset spec (default synthetic); for label models (cmmn): "
                   "synthetic-scenes[,noise=2,multilabel=true,...] | flickr8k | flickr8k-aligned (one item per image, "
                   "text = its captions' mean: fused-code eval) | FILE.npz | FILE.mat")
    t.add_argument("--extractor", default="efficientnet-lite0-224", help="image features (see xmr features)")
    t.add_argument("--out", default="runs/train", help="run folder (checkpoints, metrics, curve)")
    t.add_argument("--seed", type=int, default=None, help="seeds weights and batch order (default 0)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset value, e.g. --set epochs=5 --set embed_dim=256")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch (its saved settings, plus any --set)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")


def _eval_options(e: argparse.ArgumentParser) -> None:
    e.add_argument("run", help="run folder written by xmr train, or 'pretrained' (the model shipped with xmr)")
    e.add_argument("--split", default="test")
    e.add_argument("--data", help="dataset spec (default: the one the run was trained on)")
    e.add_argument("--protocol", choices=["pairs", "labels"], help="R@K on image-sentence pairs, or label mAP "
                   "(default: what the run's model learns from; a CMMN run on flickr8k has both; a pair "
                   "model's split queries the training split by shared labels, pairwise ones by two-step K)")
    e.add_argument("--map-at", type=int, default=500, help="labels: also report mAP over the top N (mAP@N)")
    e.add_argument("--folds", type=int, default=1, help="5 for COCO 1K (mean over five 1K folds)")
    e.add_argument("--checkpoint", default="best", choices=["best", "last"])
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="evaluate with a scoring setting changed, e.g. --set alpha=0.5 (MMCA's cross-term "
                        "weight); settings that change the trained weights' shapes cannot be changed")
    e.add_argument("--json", help="write the full result (with every query's rank) here")
    e.add_argument("--two-step", type=int, nargs="+", metavar="K",
                   help="also evaluate two-step retrieval: shortlist K by a first-stage embedding, re-rank "
                        "with the model's score (one result per K)")
    e.add_argument("--first-stage", metavar="RUN", help="a trained embedding model (e.g. VSE++) as the first "
                   "stage (default: the model's own embedding)")
    e.add_argument("--no-exhaustive", action="store_true", help="skip exhaustive scoring (with --two-step)")
    e.add_argument("--plot", help="with --two-step: write the R@1 / time vs K figure here")
    e.add_argument("--kshot", type=int, nargs="+", metavar="K",
                   help="also report ACMM's k-shot subsets (e.g. --kshot 0 1 5): test pairs whose sentence has a "
                        "content word seen <= K times in training; sizes and recalls (xmr.eval.kshot)")


def _eval_embeddings_options(ee: argparse.ArgumentParser) -> None:
    ee.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ee.add_argument("images", help="image embeddings, .npy (N_images, D)")
    ee.add_argument("captions", help="caption embeddings, .npy (N_captions, D)")
    ee.add_argument("--caption-image", metavar="FILE", help="each caption's image index (0-based): .npy of "
                    "integers or a text file with one per line")
    ee.add_argument("--captions-per-image", type=int, metavar="N", help="caption j belongs to image j // N")
    ee.add_argument("--score", default="ip", choices=["ip", "cosine", "l2"],
                    help="inner product (default), cosine, or negative squared Euclidean distance")
    ee.add_argument("--folds", type=int, default=1, help="5 for COCO 1K (mean over five 1K folds); 1 for 5K")
    ee.add_argument("--dataset", help="a name recorded in the JSON (CLIP_benchmark's 'dataset')")
    ee.add_argument("--model", help="a name recorded in the JSON (CLIP_benchmark's 'model')")
    ee.add_argument("--json", help="write the full result (every query's rank, CLIP_benchmark's keys) here")


def _index_options(ix: argparse.ArgumentParser) -> None:
    ix.add_argument("action", choices=["build", "info"])
    ix.add_argument("target", nargs="?", help="build: the trained run folder (default: the pretrained model "
                    "shipped with xmr, also named 'pretrained'); info: the index")
    ix.add_argument("--data", help="a dataset spec: index its --split (images and captions)")
    ix.add_argument("--split", default="test")
    ix.add_argument("--images", help="a folder of images (searched recursively)")
    ix.add_argument("--sentences", help="a UTF-8 file, one sentence per line")
    ix.add_argument("--out", default="runs/index", help="where the index goes (a symlink to its current version)")
    ix.add_argument("--kind", default="auto", choices=["auto", "flat", "hnsw", "ivf"],
                    help="faiss index: auto = exact below 50k vectors, HNSW below 500k, IVF above")
    ix.add_argument("--quiet", action="store_true")


def _search_options(se: argparse.ArgumentParser) -> None:
    se.add_argument("index")
    se.add_argument("query", nargs="?", help="the sentence (text -> image)")
    se.add_argument("--image", help="an image file (image -> text)")
    se.add_argument("-k", type=int, default=10)
    se.add_argument("--shortlist", type=int, default=100, help="first-stage candidates a pairwise model re-ranks")
    se.add_argument("--json", action="store_true")
    se.add_argument("--binary", action="store_true", help="Hamming search on hash codes (CMMN indexes)")
    _text_runtime_option(se)


def _text_runtime_option(p: argparse.ArgumentParser) -> None:
    from xmr.features.text import RUNTIMES
    from xmr.search.engine import TEXT_RUNTIME

    p.add_argument("--text-runtime", default=TEXT_RUNTIME,
                   help=f"what runs MiniLM on query sentences: {' or '.join(RUNTIMES)} (ONNX Runtime, exported once "
                        f"into <cache>/onnx/; default {TEXT_RUNTIME})")


def _serve_options(sv: argparse.ArgumentParser) -> None:
    from xmr.search.batching import MAX_BATCH, WINDOW_MS

    sv.add_argument("index")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--batch-window-ms", type=float, default=WINDOW_MS,
                    help=f"micro-batching: text and image queries arriving within this many ms (at most "
                         f"{MAX_BATCH}) are encoded and searched together, with the same answers; 0 searches "
                         f"each request alone (default {WINDOW_MS:g})")
    _text_runtime_option(sv)


def _export_options(x: argparse.ArgumentParser) -> None:
    x.add_argument("run", help="run folder written by xmr train")
    x.add_argument("--out", required=True, help="the bundle folder (e.g. xmr/bundled/vsepp-flickr8k)")
    x.add_argument("--checkpoint", default="best", choices=["best", "last"])


def _demo_options(m: argparse.ArgumentParser) -> None:
    m.add_argument("--out", default="runs/demo")
    m.add_argument("--quiet", action="store_true")


# name: (help, handler, its options, takes the common options)
COMMANDS = {
    "data": ("Read a dataset and print its splits (checks the files).", cmd_data, _data_options, False),
    "features": ("Extract EfficientNet-Lite0 grid and pooled features (resumable, cached).", cmd_features,
                 _features_options, True),
    "train": ("Train a model: dev validation each epoch, best checkpoint kept.", cmd_train, _train_options, True),
    "eval": ("Evaluate a trained run: R@1/5/10, medr, meanr, rsum, mR; for a label model (CMMN) mAP, "
             "mAP@N and P@n over every query -> target modality pair, real-valued and binary.", cmd_eval,
             _eval_options, True),
    "eval-embeddings": ("Evaluate any model's embeddings (.npy files) with xmr's protocol: R@1/5/10, medr, "
                        "meanr, rsum, mR (COCO 1K: --folds 5); the JSON also has CLIP_benchmark's keys.",
                        cmd_eval_embeddings, _eval_embeddings_options, False),
    "index": ("Build a search index over a collection with a trained model, or describe one.", cmd_index,
              _index_options, True),
    "search": ("Search an index: images for a sentence, or sentences for --image.", cmd_search, _search_options,
               True),
    "serve": ("Serve an index: HTTP API and a search page.", cmd_serve, _serve_options, True),
    "export": ("Write a run as a small bundle (float16 weights, metadata, vocabulary) that search and eval "
               "read like a run; the pretrained model shipped with xmr is one.", cmd_export, _export_options, True),
    "demo": ("Synthetic data, small VSE++: train, evaluate, print the R@K table.", cmd_demo, _demo_options, True),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``xmr`` parser: one subcommand per entry of ``COMMANDS``."""
    p = argparse.ArgumentParser(prog="xmr", description="Cross-modal image-sentence retrieval.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    common = _common_options()
    for name, (help_, fn, options, takes_common) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_, epilog=EXAMPLES,
                            parents=[common] if takes_common else [],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=fn)
        options(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    from xmr.checkpoint import CheckpointError
    from xmr.data.base import DataError
    from xmr.errors import one_line

    args = build_parser().parse_args(argv)
    if hasattr(args, "threads"):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.fn(args)
    except (DataError, CheckpointError, KeyError, ValueError, OSError) as e:
        print(f"xmr: error: {one_line(e)}", file=sys.stderr)
        return 2




if __name__ == "__main__":
    sys.exit(main())
