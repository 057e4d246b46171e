"""Training and evaluation of label-based models (CMMN) on labelled multi-modal feature sets.

CMMN learns from class labels, not image-sentence pairs, and from any number of modalities, so
its stages do not fit the pair loop of ``xmr.train``:

1. pre-networks: each modality's MLP + classifier trained on its training split (cross-entropy);
2. memory generation (Eq. 6) from the frozen pre-networks' features and probabilities;
3. the memory network (Eq. 1-5), queries drawn from every modality's training split; each epoch
   ends with a dev evaluation (mean mAP over all query -> target modality pairs), the best
   checkpoint is kept.

Runs are written like ``xmr train`` runs (``best``/``last`` safetensors + JSON, ``config.json``,
``metrics.jsonl``, ``curve.png``; ``vocab.json`` for Flickr8k), so ``xmr eval``, ``xmr index``
and ``xmr serve`` load a CMMN run as any other. ``--resume`` continues from the last finished
stage or epoch.

Evaluation protocol (the paper's Sec. 4.1): queries are a split of the query modality, the
database is the target modality's training split (its ``database`` split where the set has one);
relevance is sharing a label; mAP over the whole database, mAP@500 and P@n, on ``h`` with
Euclidean distance (real-valued) and on ``b`` with Hamming distance (binary). For aligned sets
(Wiki/COCO-style pairs) each query modality is also searched against one fused code per database
item (``fused_codes``, the paper's COCO protocol).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from xmr import checkpoint
from xmr.data.labelled_sets import LabelledSet, Modality, load_mat, load_npz, synthetic_scenes
from xmr.eval.label_ranking import label_retrieval_metrics, relevance
from xmr.features.store import DEFAULT_CACHE
from xmr.models import create_model
from xmr.models.cmmn import CMMN, fused_codes, select_memory, sentence_vectors
from xmr.options import key_values
from xmr.train import make_optimizer, resolve_preset, seed_everything

RECIPE_DEFAULTS = dict(pre_epochs=15, epochs=20, batch_size=128, lr=1e-3, pre_lr=1e-3, optimizer="adam",
                       momentum=0.9, weight_decay=0.0, grad_clip=0.0, map_at=500, dev_queries=None)
P_AT = (1, 10, 100)


@dataclass
class LabelledConfig:
    data: str = "synthetic-scenes"  # synthetic-scenes | flickr8k | PATH.npz | PATH.mat
    preset: str = "cpu"
    out: str = "runs/cmmn"
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    cache: str = str(DEFAULT_CACHE)
    extractor: str = "efficientnet-lite0-224"
    progress: bool = True

    def resolved(self) -> tuple[dict, dict]:
        return resolve_preset("cmmn", self.preset, self.overrides, RECIPE_DEFAULTS)


# --------------------------------------------------------------------------- data
def flickr8k_labelled(cache: Path = DEFAULT_CACHE, extractor: str = "efficientnet-lite0-224",
                      progress: bool = True) -> LabelledSet:
    """Flickr8k as a labelled two-modality set: ``image`` = pooled CNN features, ``text`` = each
    caption's mean MiniLM token state (``sentence_vectors``), labels = the caption-keyword classes
    (xmr/data/keyword_labels.py; a caption has its image's labels). Items without any class are left out,
    as the hashing literature prunes unlabelled COCO images."""
    from xmr.data import DatasetSpec, open_split
    from xmr.data.keyword_labels import LABEL_NAMES, keyword_labels
    from xmr.features.store import split_with_features
    from xmr.features.text import bert_states

    parts: dict[str, dict[str, list]] = {"image": {"x": [], "y": []}, "text": {"x": [], "y": []}}
    splits: dict[str, dict[str, np.ndarray]] = {"image": {}, "text": {}}
    offset = {"image": 0, "text": 0}
    for name in ("train", "dev", "test"):
        s = split_with_features("flickr8k", name, "pooled", extractor, cache, progress)
        labels = keyword_labels(open_split("flickr8k", name)).astype(bool)
        states, mask = bert_states(s.captions, Path(cache) / "text" / DatasetSpec.parse("flickr8k").key, name,
                                   progress=progress)
        text = np.concatenate([sentence_vectors(torch.from_numpy(np.asarray(states[i:i + 4096], np.float32)),
                                                torch.from_numpy(np.array(mask[i:i + 4096]))).numpy()
                               for i in range(0, len(states), 4096)])
        caption_labels = labels[s.caption_image]
        for mod, x, y in (("image", np.asarray(s.features, np.float32), labels), ("text", text, caption_labels)):
            keep = y.any(1)
            parts[mod]["x"].append(x[keep])
            parts[mod]["y"].append(y[keep])
            splits[mod][name] = np.arange(offset[mod], offset[mod] + int(keep.sum()))
            offset[mod] += int(keep.sum())
    modalities = {m: Modality(np.concatenate(p["x"]), np.concatenate(p["y"]), splits[m]) for m, p in parts.items()}
    return LabelledSet("flickr8k", modalities, list(LABEL_NAMES), aligned=False)


def open_labelled(data: str, cache: Path = DEFAULT_CACHE, extractor: str = "efficientnet-lite0-224",
                  progress: bool = True, seed: int = 0) -> LabelledSet:
    """``synthetic-scenes[,KEY=VALUE...]`` (options of ``synthetic_scenes``, e.g. noise=2,multilabel=true),
    ``flickr8k``, or a ``.npz`` / ``.mat`` file."""
    name, *options = data.split(",")
    if name == "synthetic-scenes":
        kwargs = {"seed": seed, **key_values(
            options, lambda option: ValueError(f"labelled data {data!r}: option {option!r} is not KEY=VALUE"))}
        try:
            return synthetic_scenes(**kwargs)
        except TypeError as e:
            raise ValueError(f"labelled data {data!r}: {e}") from e
    if data == "flickr8k":
        return flickr8k_labelled(cache, extractor, progress)
    path = Path(data)
    if path.suffix == ".npz":
        return load_npz(path)
    if path.suffix == ".mat":
        return load_mat(path)
    raise ValueError(f"labelled data {data!r}: use synthetic-scenes[,KEY=VALUE...], flickr8k, or a .npz / .mat file")


# --------------------------------------------------------------------------- encoding and evaluation
@torch.no_grad()
def pre_features(model: CMMN, modality: str, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    model.eval()
    return np.concatenate([model.pre_features(modality, torch.from_numpy(x[i:i + batch])).numpy()
                           for i in range(0, len(x), batch)]) if len(x) else np.zeros((0, 0), np.float32)


@torch.no_grad()
def codes(model: CMMN, q: np.ndarray, batch: int = 4096) -> np.ndarray:
    """h (Eq. 4) of pre-network features q."""
    model.eval()
    return np.concatenate([model.code(torch.from_numpy(q[i:i + batch]))["emb"].numpy()
                           for i in range(0, len(q), batch)])


def database_split(mod: Modality) -> str:
    return "database" if "database" in mod.splits else "train"


def evaluate_labelled(model: CMMN, data: LabelledSet, split: str = "test", map_at: int | None = 500,
                      binary: bool = True, max_queries: int | None = None) -> dict:
    """Every query -> target modality pair: mAP, mAP@``map_at``, P@n, real-valued (Euclidean on h)
    and binary (Hamming on b); plus the mean over pairs. ``max_queries`` caps queries per pair
    (the first ones of the split, for cheap dev checks)."""
    h = {}
    for m, mod in data.modalities.items():
        for s in {split, database_split(mod)}:
            rows = mod.splits[s][:max_queries] if s == split and max_queries else mod.splits[s]
            h[m, s] = (codes(model, pre_features(model, m, mod.features[rows])), mod.labels[rows])
    pairs, results = [(q, t) for q in data.modalities for t in data.modalities if q != t], {}
    kinds = ("real", "binary") if binary else ("real",)
    for q, t in pairs:
        (hq, yq), (hd, yd) = h[q, split], h[t, database_split(data.modalities[t])]
        # What a random ranking scores: the mean fraction of the database relevant to a query.
        chance = float(np.mean(np.concatenate([relevance(yq[i:i + 1024], yd).mean(1) for i in range(0, len(yq), 1024)])))
        results[f"{q}->{t}"] = {"chance": chance, "queries": len(yq), "database": len(yd)}
        for kind in kinds:
            a, b = (hq, hd) if kind == "real" else (hq > 0.5, hd > 0.5)
            results[f"{q}->{t}"] = results.get(f"{q}->{t}", {}) | {kind: label_retrieval_metrics(
                a.astype(np.float32), b.astype(np.float32), yq, yd,
                metric="euclidean" if kind == "real" else "hamming", map_at=map_at, p_at=P_AT)}
    mean = {kind: float(np.mean([results[f"{q}->{t}"][kind]["mAP"] for q, t in pairs])) for kind in kinds}
    mean["chance"] = float(np.mean([results[f"{q}->{t}"]["chance"] for q, t in pairs]))
    out = {"pairs": results, "mean_mAP": mean, "split": split, "bits": model.bits}
    if data.aligned and binary:  # the paper's COCO protocol: one fused code per database item
        db = database_split(next(iter(data.modalities.values())))
        fused = fused_codes(*(torch.from_numpy(h[m, db][0]) for m in data.modalities)).numpy()
        out["fused"] = {f"{q}->fused": label_retrieval_metrics(
            (h[q, split][0] > 0.5).astype(np.float32), fused.astype(np.float32), h[q, split][1], h[q, db][1],
            metric="hamming", map_at=map_at, p_at=P_AT) for q in data.modalities}
    return out


def format_labelled(result: dict) -> str:
    """The evaluation as a table in percent (``chance``: the mAP-like score of a random ranking)."""
    kinds = [k for k in result["mean_mAP"] if k != "chance"]
    at = next((key for key in result["pairs"][next(iter(result["pairs"]))]["real"] if key.startswith("mAP@")), None)
    head = f"{'query -> target':<26}{'chance':>8}" + "".join(
        f"{k + ' mAP':>13}" + (f"{k + ' ' + at:>16}" if at else "") for k in kinds)
    lines = [head]
    for pair, r in result["pairs"].items():
        lines.append(f"{pair:<26}{100 * r['chance']:>8.1f}" + "".join(
            f"{100 * r[k]['mAP']:>13.1f}" + (f"{100 * r[k][at]:>16.1f}" if at else "") for k in kinds))
    lines.append(f"{'mean':<26}{100 * result['mean_mAP']['chance']:>8.1f}" + "".join(
        f"{100 * result['mean_mAP'][k]:>13.1f}" + (" " * 16 if at else "") for k in kinds))
    for pair, r in result.get("fused", {}).items():  # aligned sets: binary, fused database codes
        lines.append(f"{pair:<26}{'':>8}{'':>13}" + (" " * 16 if at else "") + f"{100 * r['mAP']:>13.1f}"
                     + (f"{100 * r[at]:>16.1f}" if at else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------- training
def plot_curve(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] + 1 for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(epochs, [r["train_loss"] for r in rows], marker="o")
    ax[0].set(xlabel="epoch", ylabel="mean training loss", title="training loss")
    ax[1].plot(epochs, [100 * r["dev_mAP"] for r in rows], marker="o")
    ax[1].set(xlabel="epoch", ylabel="dev mean mAP (%)", title="dev mAP (real-valued)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    return [order[s:s + batch_size] for s in range(0, n, batch_size)]


def _step(model: CMMN, optimizer: torch.optim.Optimizer, loss: torch.Tensor, recipe: dict) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if recipe["grad_clip"]:
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
    optimizer.step()


def train_prenets(model: CMMN, data: LabelledSet, recipe: dict, seed: int, progress: bool) -> dict:
    """Stage 1: each modality's pre-network and discriminator; returns train/dev accuracy per modality."""
    opt = make_optimizer(recipe["optimizer"], [p for m in model.modalities for p in
                                               [*model.prenet[m].parameters(), *model.pre_head[m].parameters()]],
                         {**recipe, "lr": recipe["pre_lr"]})
    from xmr.models.cmmn import soft_targets

    for epoch in tqdm(range(int(recipe["pre_epochs"])), desc="pre-networks", disable=not progress):
        model.train()
        rng = np.random.default_rng([seed, 1000 + epoch])
        for m in model.modalities:
            x, y = data.split(m, "train")
            for idx in _batches(len(x), int(recipe["batch_size"]), rng):
                logits = model.pre_logits(m, torch.from_numpy(x[idx]))
                target = soft_targets(torch.from_numpy(y[idx]))
                _step(model, opt, -(target * torch.log_softmax(logits, -1)).sum(1).mean(), recipe)
    model.eval()
    accuracy = {}
    with torch.no_grad():
        for m in model.modalities:
            for s in ("train", "dev"):
                x, y = data.split(m, s)
                if len(x):
                    pred = model.pre_logits(m, torch.from_numpy(x)).argmax(1).numpy()
                    accuracy[f"{m}.{s}"] = float(y[np.arange(len(y)), pred].mean())
    return accuracy


def build_memory(model: CMMN, data: LabelledSet, k: int, method: str, seed: int) -> dict[str, int]:
    """Stage 2 (Eq. 6): every modality's memory from its training split's pre-network features."""
    for m in model.modalities:
        x, y = data.split(m, "train")
        q = pre_features(model, m, x)
        with torch.no_grad():
            probs = torch.softmax(model.pre_head[m](torch.from_numpy(q)), -1).numpy()
        vectors, _ = select_memory(q, y, probs, k, method, seed)
        model.set_memory(m, vectors)
    return model.memory_sizes


def train_labelled(cfg: LabelledConfig, resume: bool = False) -> dict:
    """Train CMMN in its three stages; returns the best dev result."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    resuming = resume and (out / "last.json").is_file()
    if resuming:
        saved = json.loads((out / "config.json").read_text())
        cfg = LabelledConfig(**{**saved, "progress": cfg.progress, "overrides": {**saved["overrides"], **cfg.overrides}})
    model_kw, recipe = cfg.resolved()
    data = open_labelled(cfg.data, Path(cfg.cache), cfg.extractor, cfg.progress, cfg.seed)
    for m, mod in data.modalities.items():
        for s in ("train", "dev"):
            if len(mod.splits.get(s, [])) == 0:
                raise ValueError(f"{cfg.data}: modality {m!r} has no {s} items; CMMN trains on train and picks "
                                 "its checkpoint on dev (give the file a dev split)")
    if cfg.progress:
        print(data.describe(), flush=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    if cfg.data == "flickr8k":  # runs that serve the pair interface carry the vocabulary xmr eval reads
        from xmr.data import open_split
        from xmr.data.text import Vocab

        Vocab.build(open_split("flickr8k", "train").captions, 1).save(out / "vocab.json")
    seed_everything(cfg.seed)
    dims = {m: int(mod.features.shape[1]) for m, mod in data.modalities.items()}
    kwargs = {**model_kw, "modalities": dims, "n_classes": len(data.class_names)}
    meta_base = {"model": "cmmn", "data": cfg.data, "image_input": "pooled", "extractor": cfg.extractor,
                 "max_len": 50, "class_names": data.class_names}

    model = create_model("cmmn", **kwargs)
    state: dict = {"stage": "start"}
    if resuming:
        state = checkpoint.read_meta(out / "last")
        kwargs = state["model_kwargs"]
        model = create_model("cmmn", **kwargs)
    if state["stage"] == "start":
        t0 = time.perf_counter()
        accuracy = train_prenets(model, data, recipe, cfg.seed, cfg.progress)
        kwargs["memory_sizes"] = build_memory(model, data, int(model_kw["memory_per_class"]),
                                              model_kw["memory_init"], cfg.seed)
        state = {"stage": "memory", "epoch": -1, "best": {"mean_mAP": {"real": -1.0}}, "pre_accuracy": accuracy,
                 "pre_seconds": time.perf_counter() - t0}
        checkpoint.save(out / "last", model, {**meta_base, **state, "model_kwargs": kwargs})
        print("pre-network accuracy: " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in accuracy.items()), flush=True)
    model.freeze_prenets()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(recipe["optimizer"], params, recipe)
    if resuming:
        checkpoint.load(out / "last", model, [opt] if state["stage"] == "joint" else None)
    # The joint stage reads the frozen pre-networks' features, computed once.
    q_train = {m: pre_features(model, m, data.split(m, "train")[0]) for m in model.modalities}
    y_train = {m: data.split(m, "train")[1] for m in model.modalities}
    metrics = out / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()][:state["epoch"] + 1] \
        if resuming and metrics.is_file() else []
    best = state["best"]
    queries = [(m, i) for m in model.modalities for i in range(len(q_train[m]))]
    mods = np.array([model.modalities.index(m) for m, _ in queries])
    rows_of = np.array([i for _, i in queries])
    for epoch in range(state["epoch"] + 1, int(recipe["epochs"])):
        model.train()
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, epoch])
        sums: dict[str, float] = {}
        batches = _batches(len(queries), int(recipe["batch_size"]), rng)
        for idx in tqdm(batches, desc=f"epoch {epoch + 1}/{recipe['epochs']}", disable=not cfg.progress):
            # A batch mixes queries of every modality; each modality's rows are coded together.
            q = torch.cat([torch.from_numpy(q_train[m][rows_of[idx][mods[idx] == j]])
                           for j, m in enumerate(model.modalities)])
            y = torch.cat([torch.from_numpy(y_train[m][rows_of[idx][mods[idx] == j]])
                           for j, m in enumerate(model.modalities)])
            parts = model.label_loss(model.code(q), y)
            _step(model, opt, parts["loss"], recipe)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        seconds = time.perf_counter() - t0
        dev = evaluate_labelled(model, data, "dev", recipe["map_at"], binary=False, max_queries=recipe["dev_queries"])
        row = {"epoch": epoch, "train_loss": sums["loss"] / len(batches), "train_seconds": seconds,
               **{f"train_{k}": v / len(batches) for k, v in sums.items() if k != "loss"},
               "dev_mAP": dev["mean_mAP"]["real"]}
        rows.append(row)
        print(f"epoch {epoch + 1}: loss {row['train_loss']:.4f}  dev mean mAP {100 * row['dev_mAP']:.1f}  "
              f"({seconds:.0f}s)", flush=True)
        if dev["mean_mAP"]["real"] > best["mean_mAP"]["real"]:
            best = {**dev, "epoch": epoch}
            checkpoint.save(out / "best", model, {**meta_base, "model_kwargs": kwargs, "epoch": epoch, "dev": best})
        state = {**state, "stage": "joint", "epoch": epoch, "best": best}
        checkpoint.save(out / "last", model, {**meta_base, **state, "model_kwargs": kwargs}, [opt])
        metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
        plot_curve(rows, out / "curve.png")
    return best


def load_labelled_run(run: str | Path, which: str = "best") -> tuple[CMMN, dict]:
    stem = Path(run) / which
    meta = checkpoint.read_meta(stem)
    model = create_model(meta["model"], **meta["model_kwargs"])
    checkpoint.load(stem, model)
    return model.eval(), meta
