"""One training loop for every model: data -> batches -> the model's stage loss -> optimiser.

What differs between models is declared on the model (``xmr/models/base.py``) and called here:
what it learns from (``learns_from``: image-sentence pairs, dev metric rsum of R@K; or
class-labelled modalities, dev metric mean mAP; a ``PairTask`` or ``LabelTask`` opens that data
and evaluates on dev), the data facts its constructor takes, its pretrained word vectors, its
stages (CMMN: pre-networks, then the joint stage), each stage's batches, loss and optimisers.
Each epoch of a validated stage ends with a dev evaluation; the best checkpoint is kept, the
last one is kept for ``--resume`` (also every ``checkpoint_every`` steps inside an epoch), and
``metrics.jsonl`` plus ``curve.png`` record the run. Batch order depends only on
``(seed, epoch)`` and the torch RNG is checkpointed, so a resumed run continues exactly, from the
middle of an epoch too.
"""
from __future__ import annotations

import inspect
import itertools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from xmr import checkpoint, distributed
from xmr.data import DatasetSpec, open_split
from xmr.data.pairs import PairData
from xmr.data.text import Vocab, glove_vectors, skipgram_vectors
from xmr.eval.evaluate import evaluate, format_table
from xmr.eval.labelled import evaluate_labelled
from xmr.features.labelled import FLICKR8K_SETS, labelled_set
from xmr.errors import ConfigError
from xmr.features.image import JOIN, ExtractorSpec
from xmr.features.store import DEFAULT_CACHE, pair_data
from xmr.models import create_model, get_entry, get_preset
from xmr.models.base import Inputs, RetrievalModel, Reps, Stage
from xmr.runs import check_model_kwargs

RECIPE_DEFAULTS = dict(epochs=10, batch_size=128, lr=2e-4, optimizer="adam", momentum=0.9,
                       weight_decay=0.0, lr_decay_epochs=[], lr_decay=0.1, grad_clip=2.0,
                       max_len=50, min_word_count=1, word_vectors="glove", dev_images=None,
                       train_images=None, early_stop=None, dev_rerank_k=None, checkpoint_every=200,
                       augment="none", init_from=None)


@dataclass
class TrainConfig:
    model: str = "vsepp"
    preset: str = "tiny"
    data: str = "synthetic"
    extractor: str = "efficientnet-lite0-224"
    out: str = "runs/demo"
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)  # recipe keys or model keys
    cache: str = str(DEFAULT_CACHE)
    progress: bool = True
    on_bad_input: str = "fail"  # unreadable images: stop ("fail") or leave them out ("skip")

    def resolved(self) -> tuple[dict, dict]:
        """(model kwargs, training recipe): the preset with ``overrides`` applied."""
        cls = get_entry(self.model).cls
        defaults = {**RECIPE_DEFAULTS, **TASKS[cls.learns_from].recipe_defaults, **cls.recipe_defaults}
        return resolve_preset(self.model, self.preset, self.overrides, defaults)


def resolve_preset(model: str, preset: str, overrides: dict[str, Any], defaults: dict) -> tuple[dict, dict]:
    """A registered model's preset with ``overrides`` applied: each key goes to the recipe (whose
    keys are ``defaults``'s and the preset's) or to the model's constructor, else a KeyError."""
    chosen = get_preset(model, preset)
    model_kw, recipe = dict(chosen.model), {**defaults, **chosen.train}
    allowed = set(inspect.signature(get_entry(model).cls.__init__).parameters) - {"self"}
    for key, value in overrides.items():
        if key in recipe:
            recipe[key] = value
        elif key in allowed:
            model_kw[key] = value
        else:
            raise KeyError(f"--set {key}: not a training setting ({', '.join(sorted(recipe))}) "
                           f"nor a {model} argument ({', '.join(sorted(allowed))})")
    return model_kw, recipe


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def set_lr(optimizers: list[torch.optim.Optimizer], recipe: dict, epoch: int) -> float:
    factor = recipe["lr_decay"] ** sum(epoch >= e for e in recipe["lr_decay_epochs"])
    for opt in optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor
    return optimizers[0].param_groups[0]["lr"]


# --------------------------------------------------------------------------- what a model learns from
class PairTask:
    """Image-sentence pairs (``learns_from="pairs"``): the training captions' vocabulary, each
    split's data as the model reads it (``inputs``), dev R@K each epoch (rsum picks the best)."""

    recipe_defaults: dict = {}
    dev_curves = (("dev_i2t_r1", "image→text R@1"), ("dev_t2i_r1", "text→image R@1"))
    curve_axes = dict(loss_scale="log", dev_label="dev R@1 (%)", dev_title="dev recall")

    def __init__(self, cfg: TrainConfig, recipe: dict, inputs: Inputs, ctx: distributed.Context, out: Path,
                 resuming: bool):
        self.recipe = recipe
        spec = DatasetSpec.parse(cfg.data)  # once, for the vocabulary and every split
        if resuming:
            self.vocab = Vocab.load(out / "vocab.json")
        else:
            # The vocabulary comes from the training split only.
            self.vocab = Vocab.build(open_split(spec, "train").captions, recipe["min_word_count"])
        distributed.barrier(ctx)  # every rank has read the old config and vocabulary
        if ctx.main and not resuming:
            self.vocab.save(out / "vocab.json")

        def load(split: str) -> PairData:
            return pair_data(spec, split, inputs, self.vocab, recipe["max_len"], cfg.extractor,
                             Path(cfg.cache), cfg.progress and ctx.main, cfg.on_bad_input)

        if not ctx.main:  # rank 0 extracts features into the cache first; the others then read them
            distributed.barrier(ctx)
        self.train, self.dev = load("train"), load("dev")
        check_train_dev(self.train, self.dev)
        if ctx.main:
            distributed.barrier(ctx)
        if recipe["dev_images"]:  # pairwise models may validate on the first N dev images only
            self.dev = self.dev.head(int(recipe["dev_images"]))
        if recipe["train_images"]:  # reduced-budget runs (e.g. ablations) train on the first N images
            self.train = self.train.head(int(recipe["train_images"]))
        self.train.set_augment(recipe["augment"])
        if self.train.n_train_batches(int(recipe["batch_size"])) == 0:
            raise ValueError(f"batch size {recipe['batch_size']} is larger than the {self.train.n_captions} "
                             "training pairs; lower --set batch_size")
        self.captions = self.train.split.captions
        self.extractor = cfg.extractor
        self.meta = {"image_input": inputs.image}

    def facts(self) -> dict[str, Callable[[], Any]]:
        data = self.train
        return {"vocab_size": lambda: len(self.vocab), "image_dim": lambda: data.image_dim,
                "n_regions": lambda: int(data.features.shape[1]) if data.features.ndim == 3 else 1,
                "max_len": lambda: int(self.recipe["max_len"]), "n_train_images": lambda: int(data.n_images),
                # a joined extractor has no one backbone: a CNN tail over it is refused by name
                "backbone": lambda: self.extractor if JOIN in self.extractor else ExtractorSpec.parse(self.extractor).backbone}

    def describe(self) -> str:
        return f"{self.train.n_captions} training pairs, vocab {len(self.vocab)}"

    def validate(self, model: RetrievalModel) -> dict:
        """Dev results: exhaustive, or for pairwise models with ``dev_rerank_k`` two-step retrieval
        (the model's own embedding shortlists K, its pairwise score re-ranks them)."""
        if self.recipe["dev_rerank_k"] and model.pairwise:
            from xmr.eval.two_step import k_curve

            return k_curve(model, self.dev, [int(self.recipe["dev_rerank_k"])])[0]
        return evaluate(model, self.dev)

    @staticmethod
    def score(dev: dict) -> float:
        return dev["rsum"]

    @staticmethod
    def row(dev: dict) -> dict:
        return {"dev_rsum": dev["rsum"], "dev_i2t_r1": dev["i2t"]["r1"], "dev_t2i_r1": dev["t2i"]["r1"]}

    @staticmethod
    def summary(dev: dict) -> str:
        return f"dev rsum {dev['rsum']:.1f}  i2t R@1 {dev['i2t']['r1']:.1f}  t2i R@1 {dev['t2i']['r1']:.1f}"

    @staticmethod
    def report(best: dict) -> str | None:
        return format_table(best) if "i2t" in best else None


class LabelTask:
    """Class-labelled modalities (``learns_from="labels"``, ``xmr/data/labelled_sets.py``): the set of a
    labelled spec, dev mean mAP over every query -> target modality pair each epoch (real-valued;
    ``dev_queries`` caps the queries per pair, ``map_at`` also reports mAP@N)."""

    recipe_defaults = dict(map_at=500, dev_queries=None)
    dev_curves = (("dev_mAP_pct", "real-valued"),)
    curve_axes = dict(loss_scale="linear", dev_label="dev mean mAP (%)", dev_title="dev mAP (real-valued)")

    def __init__(self, cfg: TrainConfig, recipe: dict, inputs: Inputs, ctx: distributed.Context, out: Path,
                 resuming: bool):
        if ctx.active:
            raise ValueError("label models train in one process, not under torchrun")
        self.recipe, self.vocab, self.captions = recipe, None, None
        self.data = self.train = labelled_set(cfg.data, Path(cfg.cache), cfg.extractor, cfg.progress, cfg.seed)
        for m, mod in self.data.modalities.items():
            for s in ("train", "dev"):
                if len(mod.splits.get(s, [])) == 0:
                    raise ValueError(f"{cfg.data}: modality {m!r} has no {s} items; {cfg.model} trains on train "
                                     "and picks its checkpoint on dev (give the file a dev split)")
        if cfg.progress:
            print(self.data.describe(), flush=True)
        if self.data.name in FLICKR8K_SETS:  # runs that also serve the pair interface carry its vocabulary
            Vocab.build(open_split("flickr8k", "train").captions, recipe["min_word_count"]).save(out / "vocab.json")
        self.meta = {"image_input": inputs.image, "class_names": self.data.class_names}

    def facts(self) -> dict[str, Callable[[], Any]]:
        return {"modalities": lambda: {m: mod.dim for m, mod in self.data.modalities.items()},
                "n_classes": lambda: len(self.data.class_names)}

    def describe(self) -> str:
        return f"{len(self.data.modalities)} modalities, {len(self.data.class_names)} classes"

    def validate(self, model: RetrievalModel) -> dict:
        return evaluate_labelled(model, self.data, "dev", self.recipe["map_at"], binary=False,
                                 max_queries=self.recipe["dev_queries"])

    @staticmethod
    def score(dev: dict) -> float:
        return dev["mean_mAP"]["real"]

    @staticmethod
    def row(dev: dict) -> dict:
        return {"dev_mAP": dev["mean_mAP"]["real"], "dev_mAP_pct": 100 * dev["mean_mAP"]["real"]}

    @staticmethod
    def summary(dev: dict) -> str:
        return f"dev mean mAP {100 * dev['mean_mAP']['real']:.1f}"

    @staticmethod
    def report(best: dict) -> str | None:
        return None


TASKS = {"pairs": PairTask, "labels": LabelTask}


# --------------------------------------------------------------------------- the model
def build_model(cfg: TrainConfig, facts: dict[str, Callable[[], Any]], vocab: Vocab | None,
                captions: list[str] | None, word_vectors: bool, settled: dict | None = None
                ) -> tuple[RetrievalModel, dict]:
    """The model for this config and its constructor arguments: the preset's, the data facts it
    declares (``facts``: name -> how to read it off the data), the arguments of a resumed run's
    checkpoint that neither gives (``settled``: what training settled, e.g. CMMN's memory sizes)
    and, with ``word_vectors``, its word embeddings initialised as the recipe's ``word_vectors``
    says: "glove" (GloVe 6B 50-d), "skipgram" (a Skip-Gram trained on ``captions``) or "none"
    (random)."""
    model_kw, recipe = cfg.resolved()
    if recipe["word_vectors"] not in ("glove", "skipgram", "none"):
        raise ValueError(f"word_vectors={recipe['word_vectors']!r}: use glove, skipgram or none")
    cls = get_entry(cfg.model).cls
    missing = [k for k in cls.data_facts if k not in facts]
    if missing:
        raise ValueError(f"{cfg.model} takes {', '.join(missing)} from its data, which {cls.learns_from} data lacks")
    kw = {**model_kw, **{k: facts[k]() for k in cls.data_facts}}
    kw |= {k: v for k, v in (settled or {}).items() if k not in kw}
    extra = {}
    dim = cls.word_vector_dim(**model_kw)
    if word_vectors and dim is not None and recipe["word_vectors"] != "none":
        if recipe["word_vectors"] == "glove":
            extra["word_init"], _ = glove_vectors(vocab, dim, cfg.seed)
        else:
            extra["word_init"], _ = skipgram_vectors(vocab, captions, dim, cfg.seed)
    return create_model(cfg.model, **kw, **extra), kw


def build(cfg: TrainConfig, vocab: Vocab, data: PairData, word_vectors: bool) -> tuple[RetrievalModel, dict]:
    """``build_model`` for a pair model trained on ``data`` (benchmarks and tests build one so)."""
    model_kw, recipe = cfg.resolved()
    task = PairTask.__new__(PairTask)
    task.recipe, task.vocab, task.train, task.extractor = recipe, vocab, data, cfg.extractor
    captions = data.split.captions if data is not None else None
    return build_model(cfg, task.facts(), vocab, captions, word_vectors)


def init_from(model: RetrievalModel, run: Path, vocab: Vocab | None, ctx: distributed.Context) -> None:
    """Start from the best checkpoint of an earlier run of the same model on the same training
    split (VSE++ fine-tunes its CNN from the model trained on frozen features); parts that run
    did not have keep their initialisation."""
    if vocab is not None and Vocab.load(run / "vocab.json").words != vocab.words:
        raise ValueError(f"init_from={run}: that run's vocabulary differs from this training split's")
    new = checkpoint.init_weights(run / "best", model)
    if ctx.main:
        print(f"initialised from {run}/best ({len(new)} tensors new)", flush=True)


def plot_curve(rows: list[dict], path: Path, task: type) -> None:
    """Training loss and the task's dev curves per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = task.curve_axes
    epochs = [r["epoch"] + 1 for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(epochs, [r["train_loss"] for r in rows], marker="o")
    ax[0].set(xlabel="epoch", ylabel=f"mean training loss{' (log)' if axes['loss_scale'] == 'log' else ''}",
              title="training loss", yscale=axes["loss_scale"])
    for key, label in task.dev_curves:
        ax[1].plot(epochs, [r[key] for r in rows], marker="o", label=label)
    ax[1].set(xlabel="epoch", ylabel=axes["dev_label"], title=axes["dev_title"])
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def encode_batch(engine: torch.nn.Module, batch: dict, ctx: distributed.Context) -> tuple[Reps, Reps]:
    """Both sides' parts of one global batch of pairs. Under torchrun each rank encodes its slice
    through the DDP-wrapped ``engine`` and the parts are all-gathered with gradients
    (``xmr.distributed``)."""
    if not ctx.active:
        return engine(batch)
    rows = distributed.shard(len(batch["image"]), ctx)
    img, txt = engine({k: v[rows] for k, v in batch.items() if k != "same_image"})
    return distributed.gather_reps(img), distributed.gather_reps(txt)


def batch_loss(engine: torch.nn.Module, model: RetrievalModel, batch: dict, ctx: distributed.Context) -> dict:
    """``model.loss`` of one global batch of pairs (``encode_batch``)."""
    return model.loss(*encode_batch(engine, batch, ctx), batch)


# --------------------------------------------------------------------------- the loop
def run_folder(cfg: TrainConfig, resume: bool, ctx: distributed.Context) -> tuple[TrainConfig, bool]:
    """The run folder of ``cfg.out``; resuming, the saved config plus any overrides given now
    (e.g. more epochs); a copied or moved run folder resumes where it is now."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    resuming = resume and (out / "last.json").is_file()
    if resume and not resuming and ctx.main:
        print(f"nothing to resume in {out} (no last checkpoint); starting a new run", flush=True)
    if resuming:
        saved = json.loads((out / "config.json").read_text())
        cfg = TrainConfig(**{**saved, "out": cfg.out, "progress": cfg.progress,
                             "overrides": {**saved["overrides"], **cfg.overrides}})
    return cfg, resuming


@dataclass
class EpochSums:
    """A training epoch's running sums (also what a mid-epoch checkpoint keeps)."""

    step: int = 0
    loss_sum: float = 0.0
    parts_sum: dict = field(default_factory=dict)
    seconds: float = 0.0


def prefetched(items: Iterable) -> Iterator:
    """``items`` in order, each built by a background thread while the previous one is used: the
    next batch's reads from the feature memmaps overlap the training step (which releases the GIL
    in torch's kernels)."""
    items, end = iter(items), object()
    with ThreadPoolExecutor(1, thread_name_prefix="xmr-batches") as pool:
        ahead = pool.submit(next, items, end)
        while (item := ahead.result()) is not end:
            ahead = pool.submit(next, items, end)
            yield item


def train_epoch(model: RetrievalModel, stage: Stage, batches, optimizers: list[torch.optim.Optimizer],
                encode: Callable, recipe: dict, rng: np.random.Generator, sums: EpochSums, desc: str,
                progress: bool, save_partial: Callable[[EpochSums], None] | None) -> EpochSums:
    """One epoch of ``stage``: from batch ``sums.step`` on (the order is the same on resume), each
    batch's loss, backward, clipping and optimiser steps; ``save_partial`` every
    ``checkpoint_every`` steps."""
    n_batches = batches.n_train_batches(recipe["batch_size"])
    todo = prefetched(itertools.islice(batches.train_batches(recipe["batch_size"], rng), sums.step, None))
    t0 = time.perf_counter() - sums.seconds
    bar = tqdm(todo, total=n_batches, initial=sums.step, desc=desc, disable=not progress)
    for sums.step, batch in enumerate(bar, sums.step + 1):
        parts = model.stage_loss(stage, batch, encode)
        check_finite_loss(parts, desc, sums.step)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        if recipe["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        for opt in optimizers:
            opt.step()
        sums.loss_sum += parts["loss"].item()
        for key, value in parts.items():  # a model's loss terms, logged per epoch
            if key != "loss":
                sums.parts_sum[key] = sums.parts_sum.get(key, 0.0) + float(value.detach())
        bar.set_postfix(loss=f"{parts['loss'].item():.3f}")
        every = recipe["checkpoint_every"]
        if save_partial and every and sums.step % int(every) == 0 and sums.step < n_batches:
            save_partial(EpochSums(sums.step, sums.loss_sum, dict(sums.parts_sum), time.perf_counter() - t0))
    sums.seconds = time.perf_counter() - t0
    return sums


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train the model's stages in turn, validating on dev each epoch of a validated stage;
    returns the best dev result. Under torchrun, ranks train pair models data-parallel and rank 0
    validates and writes the run folder, and every rank leaves the process group at the end."""
    ctx = distributed.setup()
    cfg, resuming = run_folder(cfg, resume, ctx)
    out = Path(cfg.out)
    model_kw, recipe = cfg.resolved()
    cls = get_entry(cfg.model).cls
    check_recipe(recipe, cls.stages)
    check_model_kwargs(cfg.model, model_kw, "--set")
    task = TASKS[cls.learns_from](cfg, recipe, cls.inputs_for(**model_kw), ctx, out, resuming)
    if ctx.main:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    # Seeded after the data: extracting features on a cold cache builds the CNN, which draws from
    # the global RNG, and a run's weights must not depend on whether the cache was warm.
    seed_everything(cfg.seed)
    saved = checkpoint.read_meta(out / "last") if resuming else {}
    model, model_kwargs = build_model(cfg, task.facts(), task.vocab, task.captions, word_vectors=not resuming,
                                      settled=saved.get("model_kwargs", {}))
    if recipe["init_from"] and not resuming:
        init_from(model, Path(recipe["init_from"]), task.vocab, ctx)
    # static_graph: a parameter used in encoding but not in a variant's loss (e.g. JGCAR's
    # co-attention when beta = 1) gets no gradient, identically on every rank.
    engine = torch.nn.parallel.DistributedDataParallel(model, static_graph=True) if ctx.active else model
    # What ended stages reported (e.g. CMMN's pre-network accuracy) stays in every later checkpoint.
    meta_base = {"model": cfg.model, **task.meta, "extractor": cfg.extractor, "data": cfg.data,
                 "max_len": recipe["max_len"], "stage_info": saved.get("stage_info", {})}

    def meta(**more) -> dict:
        return {**meta_base, "model_kwargs": {**model_kwargs, **model.learned_kwargs()}, **more}

    names = [s.name for s in model.stages]
    first = names.index(saved.get("stage", names[0]))
    best, rows = saved.get("best", {}), []
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if ctx.main:
        print(f"{cfg.model}/{cfg.preset}: {n_params / 1e6:.2f}M parameters, {task.describe()}, "
              + ", ".join(f"{s.name} {recipe[s.epochs]} epochs" for s in model.stages), flush=True)
    for index, stage in enumerate(model.stages[first:], first):
        model.start_stage(stage)
        optimizers = model.build_optimizers(stage, recipe)
        start, partial = 0, None
        if resuming and index == first:
            loaded = checkpoint.load(out / "last", model, optimizers if saved["optimizer_groups"] else None)
            partial = loaded.get("partial")  # a checkpoint from the middle of an epoch
            start = loaded["epoch"] + (0 if partial else 1)
            metrics = out / "metrics.jsonl"
            rows = [json.loads(line) for line in metrics.read_text().splitlines()][:start] \
                if metrics.is_file() else []
        batches = model.stage_batches(stage, task.train)
        t_stage = time.perf_counter()
        best = run_stage(model, engine, stage, batches, optimizers, task, recipe, cfg, ctx, out, start, partial,
                         best, rows, meta)
        if not stage.validate:
            info = model.end_stage(stage, task.train, cfg.seed)
            meta_base["stage_info"] = {**meta_base["stage_info"],
                                       stage.name: {**info, "seconds": time.perf_counter() - t_stage}}
            if ctx.main:
                print(f"{stage.name}: {json.dumps(info)}", flush=True)
                nxt = names[index + 1] if index + 1 < len(names) else stage.name
                checkpoint.save(out / "last", model, meta(stage=nxt, epoch=-1, best=best))
    report = task.report(best)
    if ctx.main and report:
        print(f"best dev epoch {best.get('epoch', -1) + 1}:\n{report}", flush=True)
    # Free the process group (and join gloo's threads) before the interpreter exits; a gloo thread
    # still finishing the last collective at shutdown aborts the process (distributed.teardown).
    del engine
    distributed.teardown(ctx)
    return best


def run_stage(model: RetrievalModel, engine: torch.nn.Module, stage: Stage, batches, optimizers: list,
              task, recipe: dict, cfg: TrainConfig, ctx: distributed.Context, out: Path, start: int,
              partial: dict | None, best: dict, rows: list[dict], meta: Callable[..., dict]) -> dict:
    """The epochs ``start``.. of one stage; returns the best dev result so far."""
    epochs = int(recipe[stage.epochs])

    def encode(batch: dict) -> tuple[Reps, Reps]:
        return encode_batch(engine, batch, ctx)

    for epoch in range(start, epochs):
        stale = stage.validate and bool(recipe["early_stop"]) and \
            epoch - 1 - best.get("epoch", epoch) >= int(recipe["early_stop"])
        if distributed.stop_flag(stale, ctx):
            if ctx.main:
                print(f"early stop: no dev improvement in the last {recipe['early_stop']} epochs", flush=True)
            break
        lr = set_lr(optimizers, recipe, epoch)
        model.on_epoch_start(epoch)
        model.train()
        rng = np.random.default_rng([cfg.seed, stage.seed_offset + epoch])
        # Resuming mid-epoch: skip the batches already trained on and carry on the epoch's sums.
        sums = EpochSums(**partial) if partial and epoch == start else EpochSums()

        def save_partial(state: EpochSums) -> None:
            checkpoint.save(out / "last", model, meta(stage=stage.name, epoch=epoch, best=best,
                                                      partial=asdict(state)), optimizers)

        name = "" if len(model.stages) == 1 else f"{stage.name} "
        sums = train_epoch(model, stage, batches, optimizers, encode, recipe, rng, sums,
                           f"{name}epoch {epoch + 1}/{epochs}", cfg.progress and ctx.main,
                           save_partial if ctx.main and stage.validate else None)
        if ctx.main and stage.validate:
            n_batches = batches.n_train_batches(recipe["batch_size"])
            dev = task.validate(model)
            row = {"epoch": epoch, "lr": lr, "train_loss": sums.loss_sum / n_batches, "train_seconds": sums.seconds,
                   "samples_per_s": n_batches * recipe["batch_size"] / sums.seconds,
                   **{f"train_{k}": v / n_batches for k, v in sums.parts_sum.items()}, **task.row(dev)}
            rows.append(row)
            print(f"epoch {epoch + 1}: loss {row['train_loss']:.4f}  {task.summary(dev)}  ({sums.seconds:.0f}s)",
                  flush=True)
            if dev.get("non_finite") or not np.isfinite(task.score(dev)):  # never a best epoch
                print(f"epoch {epoch + 1}: dev scores are not finite; not kept as best", flush=True)
            elif not best or task.score(dev) > task.score(best):
                best = {k: v for k, v in dev.items() if k != "ranks"} | {"epoch": epoch}
                checkpoint.save(out / "best", model, meta(epoch=epoch, dev=best))
            # The epoch's row before the checkpoint that marks it done: a process killed in between
            # resumes from the previous checkpoint and drops the extra row (rows[:start]); the other
            # order would lose the row. Written whole, then renamed, so a kill never leaves half a line.
            tmp = out / f"metrics.jsonl.{os.getpid()}.tmp"
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(tmp, out / "metrics.jsonl")
            checkpoint.save(out / "last", model, meta(stage=stage.name, epoch=epoch, best=best), optimizers)
            plot_curve(rows, out / "curve.png", type(task))
        distributed.barrier(ctx)
    return best


def check_train_dev(train_data: PairData, dev_data: PairData) -> None:
    """Refuse an empty split, train/dev images in common, and feature widths that differ."""
    from xmr.data.base import DataError, check_disjoint

    for name, d in (("train", train_data), ("dev", dev_data)):
        if d.n_images == 0:
            raise DataError(f"the {name} split is empty (0 images); training needs images in train and dev")
    check_disjoint(train_data.split, dev_data.split)
    a, b = train_data.features.shape[1:], dev_data.features.shape[1:]
    if train_data.features.ndim == dev_data.features.ndim and a[-1] != b[-1]:
        raise DataError(f"train features are {a[-1]}-d but dev features {b[-1]}-d; both splits must come "
                        "from the same extractor")


def check_finite_loss(parts: dict, where: str, step: int) -> None:
    """Stop with a clear error when the loss is NaN or inf (before it reaches the weights)."""
    if not torch.isfinite(parts["loss"].detach()).all():
        from xmr.errors import TrainingError

        raise TrainingError(f"training loss is {parts['loss'].item()} at {where}, step {step}; stopping (the "
                            "run's best checkpoint is the last good dev epoch). Check the features "
                            "(NaN/empty rows) or lower --set lr")


RECIPE_INTS = {"epochs": 1, "batch_size": 1, "max_len": 1, "min_word_count": 1, "checkpoint_every": 0}


def check_recipe(recipe: dict, stages: tuple[Stage, ...] = (Stage("train"),)) -> None:
    """Recipe values of the right type and range, each error naming the key (``--set KEY=...``).
    Each of the model's stages trains ``recipe[stage.epochs]`` epochs: at least 1 for a model of
    one stage; 0 allowed where there are several (a run may stop after an earlier stage, e.g.
    CMMN's pre-networks, and ``--resume`` with more epochs later)."""
    low_epochs = 0 if len(stages) > 1 else 1
    ints = {**RECIPE_INTS, **{s.epochs: low_epochs for s in stages}}
    for key, low in ints.items():
        value = recipe.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"--set {key}={value!r}: must be a whole number >= {low}")
    for key in ("lr", "weight_decay", "momentum", "lr_decay"):
        value = recipe.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise ConfigError(f"--set {key}={value!r}: must be a finite number >= 0")
    for key in ("dev_images", "train_images", "early_stop", "dev_rerank_k"):
        value = recipe.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"--set {key}={value!r}: must be a whole number >= 1 (or null)")
    if not isinstance(recipe.get("lr_decay_epochs"), list):
        raise ConfigError(f"--set lr_decay_epochs={recipe.get('lr_decay_epochs')!r}: must be a list, e.g. [6]")
