"""One training loop for every model: data -> batches -> ``model.loss`` -> optimiser.

Each epoch ends with a dev evaluation (rsum); the best checkpoint is kept, the last one is kept
for ``--resume`` (also every ``checkpoint_every`` steps inside an epoch), and ``metrics.jsonl``
plus ``curve.png`` record the run. Batch order depends only on ``(seed, epoch)`` and the torch
RNG is checkpointed, so a resumed run continues exactly, from the middle of an epoch too.
"""
from __future__ import annotations

import inspect
import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from xmr import checkpoint, distributed
from xmr.data import DatasetSpec, open_split
from xmr.data.pairs import PairData
from xmr.data.text import Vocab, glove_vectors, skipgram_vectors
from xmr.eval.evaluate import evaluate, format_table
from xmr.features.store import DEFAULT_CACHE, pair_data
from xmr.models import create_model, get_entry, get_preset
from xmr.models.base import RetrievalModel

RECIPE_DEFAULTS = dict(epochs=10, batch_size=128, lr=2e-4, optimizer="adam", momentum=0.9,
                       weight_decay=0.0, lr_decay_epochs=[], lr_decay=0.1, grad_clip=2.0,
                       max_len=50, min_word_count=1, word_vectors="glove", dev_images=None,
                       train_images=None, early_stop=None, dev_rerank_k=None, checkpoint_every=200)


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
        return resolve_preset(self.model, self.preset, self.overrides, RECIPE_DEFAULTS)


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


def build_optimizers(model: RetrievalModel, recipe: dict) -> list[torch.optim.Optimizer]:
    """The model's own optimiser set-up if it defines one (e.g. JGCAR's two), else one from the recipe."""
    custom = getattr(model, "build_optimizers", None)
    if custom is not None:
        return custom(recipe)
    return [make_optimizer(recipe["optimizer"], model.parameters(), recipe)]


def make_optimizer(kind: str, params, recipe: dict) -> torch.optim.Optimizer:
    lr, wd = recipe["lr"], recipe["weight_decay"]
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=recipe["momentum"], weight_decay=wd)
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=recipe["momentum"], weight_decay=wd)
    raise ValueError(f"unknown optimizer {kind!r}")


def set_lr(optimizers: list[torch.optim.Optimizer], recipe: dict, epoch: int) -> float:
    factor = recipe["lr_decay"] ** sum(epoch >= e for e in recipe["lr_decay_epochs"])
    for opt in optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor
    return optimizers[0].param_groups[0]["lr"]


def data_facts(cfg: TrainConfig, vocab: Vocab, data: PairData) -> dict:
    """Constructor arguments that come from the data: vocabulary size, feature width and, for
    models that ask for them, the number of image regions, the maximum caption length and the
    number of training images."""
    params = inspect.signature(get_entry(cfg.model).cls.__init__).parameters
    facts = {"vocab_size": len(vocab), "image_dim": data.image_dim}
    if "n_regions" in params:
        facts["n_regions"] = int(data.features.shape[1]) if data.features.ndim == 3 else 1
    if "max_len" in params:
        facts["max_len"] = int(cfg.resolved()[1]["max_len"])
    if "n_train_images" in params:  # models that classify the training images (Revisiting)
        facts["n_train_images"] = int(data.n_images)
    return facts


def build(cfg: TrainConfig, vocab: Vocab, data: PairData, word_vectors: bool) -> tuple[RetrievalModel, dict]:
    """The model for this config and its full constructor arguments; ``word_vectors`` initialises
    its word embeddings as the recipe's ``word_vectors`` says: "glove" (GloVe 6B 50-d) or
    "skipgram" (a Skip-Gram trained on ``data``'s captions) or "none" (random)."""
    model_kw, recipe = cfg.resolved()
    if recipe["word_vectors"] not in ("glove", "skipgram", "none"):
        raise ValueError(f"word_vectors={recipe['word_vectors']!r}: use glove, skipgram or none")
    kw = {**model_kw, **data_facts(cfg, vocab, data)}
    params = inspect.signature(get_entry(cfg.model).cls.__init__).parameters
    extra = {}
    if word_vectors and "word_init" in params and recipe["word_vectors"] != "none":
        dim = kw.get("word_dim", params["word_dim"].default)
        if recipe["word_vectors"] == "glove":
            extra["word_init"], _ = glove_vectors(vocab, dim, cfg.seed)
        else:
            extra["word_init"], _ = skipgram_vectors(vocab, data.split.captions, dim, cfg.seed)
    return create_model(cfg.model, **kw, **extra), kw


def plot_curve(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] + 1 for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(epochs, [r["train_loss"] for r in rows], marker="o")
    ax[0].set(xlabel="epoch", ylabel="mean training loss (log)", title="training loss", yscale="log")
    for key, label in (("dev_i2t_r1", "image→text R@1"), ("dev_t2i_r1", "text→image R@1")):
        ax[1].plot(epochs, [r[key] for r in rows], marker="o", label=label)
    ax[1].set(xlabel="epoch", ylabel="dev R@1 (%)", title="dev recall")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def validate(model: RetrievalModel, dev: PairData, recipe: dict) -> dict:
    """Dev results: exhaustive, or for pairwise models with ``dev_rerank_k`` two-step retrieval
    (the model's own embedding shortlists K, its pairwise score re-ranks them)."""
    if recipe["dev_rerank_k"] and model.pairwise:
        from xmr.eval.two_step import k_curve

        return k_curve(model, dev, [int(recipe["dev_rerank_k"])])[0]
    return evaluate(model, dev)


def batch_loss(engine: torch.nn.Module, model: RetrievalModel, batch: dict, ctx: distributed.Context) -> dict:
    """``model.loss`` of one global batch. Under torchrun each rank encodes its slice through the
    DDP-wrapped ``engine`` and the parts are all-gathered with gradients (``xmr.distributed``)."""
    if not ctx.active:
        img, txt = engine(batch)
        return model.loss(img, txt, batch)
    rows = distributed.shard(len(batch["image"]), ctx)
    img, txt = engine({k: v[rows] for k, v in batch.items() if k != "same_image"})
    return model.loss(distributed.gather_reps(img), distributed.gather_reps(txt), batch)


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train, validating on dev each epoch; returns the best dev result. Under torchrun, ranks
    train data-parallel and rank 0 validates and writes the run folder."""
    ctx = distributed.setup()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    resuming = resume and (out / "last.json").is_file()
    if resume and not resuming and ctx.main:
        print(f"nothing to resume in {out} (no last checkpoint); starting a new run", flush=True)
    if resuming:  # the saved config, plus any overrides given now (e.g. more epochs); a copied or
        # moved run folder resumes where it is now
        saved = json.loads((out / "config.json").read_text())
        cfg = TrainConfig(**{**saved, "out": cfg.out, "progress": cfg.progress,
                             "overrides": {**saved["overrides"], **cfg.overrides}})
    model_kw, recipe = cfg.resolved()
    inputs = get_entry(cfg.model).cls.inputs_for(**model_kw)
    spec = DatasetSpec.parse(cfg.data)  # once, for the vocabulary and every split
    if resuming:
        vocab = Vocab.load(out / "vocab.json")
    else:
        # The vocabulary comes from the training split only.
        vocab = Vocab.build(open_split(spec, "train").captions, recipe["min_word_count"])
    distributed.barrier(ctx)  # every rank has read the old config and vocabulary
    if ctx.main:
        if not resuming:
            vocab.save(out / "vocab.json")
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))

    def load(split: str) -> PairData:
        return pair_data(spec, split, inputs, vocab, recipe["max_len"], cfg.extractor, Path(cfg.cache),
                         cfg.progress and ctx.main, cfg.on_bad_input)

    if not ctx.main:  # rank 0 extracts features into the cache first; the others then read them
        distributed.barrier(ctx)
    train_data, dev_data = load("train"), load("dev")
    if ctx.main:
        distributed.barrier(ctx)
    if recipe["dev_images"]:  # pairwise models may validate on the first N dev images only
        dev_data = dev_data.head(int(recipe["dev_images"]))
    if recipe["train_images"]:  # reduced-budget runs (e.g. ablations) train on the first N images
        train_data = train_data.head(int(recipe["train_images"]))
    if train_data.n_train_batches(int(recipe["batch_size"])) == 0:
        raise ValueError(f"batch size {recipe['batch_size']} is larger than the {train_data.n_captions} "
                         "training pairs; lower --set batch_size")
    # Seeded after the data: extracting features on a cold cache builds the CNN, which draws from
    # the global RNG, and a run's weights must not depend on whether the cache was warm.
    seed_everything(cfg.seed)
    model, model_kwargs = build(cfg, vocab, train_data, word_vectors=not resuming)
    # static_graph: a parameter used in encoding but not in a variant's loss (e.g. JGCAR's
    # co-attention when beta = 1) gets no gradient, identically on every rank.
    engine = torch.nn.parallel.DistributedDataParallel(model, static_graph=True) if ctx.active else model
    optimizers = build_optimizers(model, recipe)
    meta_base = {"model": cfg.model, "model_kwargs": model_kwargs,
                 "image_input": inputs.image, "extractor": cfg.extractor, "data": cfg.data,
                 "max_len": recipe["max_len"]}

    start, best, rows, partial = 0, {"rsum": -1.0}, [], None
    if resuming:
        meta = checkpoint.load(out / "last", model, optimizers)
        best = meta["best"]
        partial = meta.get("partial")  # a checkpoint from the middle of an epoch
        start = meta["epoch"] + (0 if partial else 1)
        metrics = out / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()][:start] if metrics.is_file() else []
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if ctx.main:
        print(f"{cfg.model}/{cfg.preset}: {n_params / 1e6:.2f}M parameters, {train_data.n_captions} training "
          f"pairs, vocab {len(vocab)}, epochs {start}..{recipe['epochs'] - 1}", flush=True)

    for epoch in range(start, recipe["epochs"]):
        stale = bool(recipe["early_stop"]) and epoch - 1 - best.get("epoch", epoch) >= int(recipe["early_stop"])
        if distributed.stop_flag(stale, ctx):
            if ctx.main:
                print(f"early stop: no dev improvement in the last {recipe['early_stop']} epochs", flush=True)
            break
        lr = set_lr(optimizers, recipe, epoch)
        model.on_epoch_start(epoch)
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        # Resuming mid-epoch: skip the batches already trained on (the order is the same) and
        # carry on the epoch's sums.
        done, loss_sum, parts_sum, seconds = 0, 0.0, {}, 0.0
        if partial and epoch == start:
            done, loss_sum, parts_sum, seconds = (partial["step"], partial["loss_sum"], partial["parts_sum"],
                                                  partial["seconds"])
        n_batches = train_data.n_train_batches(recipe["batch_size"])
        batches = itertools.islice(train_data.train_batches(recipe["batch_size"], rng), done, None)
        t0 = time.perf_counter() - seconds
        bar = tqdm(batches, total=n_batches, initial=done, desc=f"epoch {epoch + 1}/{recipe['epochs']}",
                   disable=not (cfg.progress and ctx.main))
        for step, batch in enumerate(bar, done + 1):
            parts = batch_loss(engine, model, batch, ctx)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            if recipe["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
            for opt in optimizers:
                opt.step()
            loss_sum += parts["loss"].item()
            for key, value in parts.items():  # a model's loss terms, logged per epoch
                if key != "loss":
                    parts_sum[key] = parts_sum.get(key, 0.0) + float(value)
            bar.set_postfix(loss=f"{parts['loss'].item():.3f}")
            every = recipe["checkpoint_every"]
            if ctx.main and every and step % int(every) == 0 and step < n_batches:
                state = {"step": step, "loss_sum": loss_sum, "parts_sum": parts_sum,
                         "seconds": time.perf_counter() - t0}
                checkpoint.save(out / "last", model, {**meta_base, "epoch": epoch, "best": best, "partial": state},
                                optimizers)
        train_seconds = time.perf_counter() - t0
        if ctx.main:
            dev = validate(model, dev_data, recipe)
            row = {"epoch": epoch, "lr": lr, "train_loss": loss_sum / n_batches, "train_seconds": train_seconds,
                   "samples_per_s": n_batches * recipe["batch_size"] / train_seconds,
                   **{f"train_{k}": v / n_batches for k, v in parts_sum.items()},
                   "dev_rsum": dev["rsum"], "dev_i2t_r1": dev["i2t"]["r1"], "dev_t2i_r1": dev["t2i"]["r1"]}
            rows.append(row)
            print(f"epoch {epoch + 1}: loss {row['train_loss']:.4f}  dev rsum {dev['rsum']:.1f}  "
                  f"i2t R@1 {dev['i2t']['r1']:.1f}  t2i R@1 {dev['t2i']['r1']:.1f}  ({train_seconds:.0f}s)",
                  flush=True)
            if dev["rsum"] > best["rsum"]:
                best = {k: v for k, v in dev.items() if k != "ranks"} | {"epoch": epoch}
                checkpoint.save(out / "best", model, {**meta_base, "epoch": epoch, "dev": best})
            checkpoint.save(out / "last", model, {**meta_base, "epoch": epoch, "best": best}, optimizers)
            (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            plot_curve(rows, out / "curve.png")
        distributed.barrier(ctx)
    if ctx.main and "i2t" in best:
        print(f"best dev epoch {best.get('epoch', -1) + 1}:\n{format_table(best)}", flush=True)
    return best
