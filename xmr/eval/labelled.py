"""Label retrieval evaluation of label models (CMMN) on a labelled multi-modal set.

The protocol of Song & Tan 2017, Sec. 4.1: queries are a split of the query modality, the
database is the target modality's training split (its ``database`` split where the set has one);
relevance is sharing a label; mAP over the whole database, mAP@``map_at`` and P@n, on ``h`` with
Euclidean distance (real-valued) and on the hash codes ``b`` with Hamming distance (binary). For
aligned sets (Wiki/COCO-style pairs) each query modality is also searched against one fused code
per database item (``fused_codes``, the paper's COCO protocol).
"""
from __future__ import annotations

import numpy as np
import torch

from xmr.data.labelled_sets import LabelledSet, Modality
from xmr.eval.label_ranking import label_retrieval_metrics, relevance
from xmr.models.base import RetrievalModel

P_AT = (1, 10, 100)


def fused_codes(*h: torch.Tensor) -> torch.Tensor:
    """The COCO experiment's code of an aligned item from its modalities' h: ``b = (h_a + h_b > 1)``
    for two, ``sum_m h_m > M / 2`` for M."""
    return (torch.stack(h).sum(0) > len(h) / 2).to(torch.uint8)


@torch.no_grad()
def codes(model: RetrievalModel, modality: str, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """``emb`` (CMMN's h, Eq. 4) of the items ``x`` of one modality, in eval mode."""
    model.eval()
    return np.concatenate([model.encode_modality(modality, torch.from_numpy(x[i:i + batch]))["emb"].numpy()
                           for i in range(0, len(x), batch)])


def binary_codes(model: RetrievalModel, h: np.ndarray) -> np.ndarray:
    return model.hash_codes(torch.from_numpy(h)).numpy()


def database_split(mod: Modality) -> str:
    return "database" if "database" in mod.splits else "train"


def evaluate_labelled(model: RetrievalModel, data: LabelledSet, split: str = "test", map_at: int | None = 500,
                      binary: bool = True, max_queries: int | None = None) -> dict:
    """Every query -> target modality pair: mAP, mAP@``map_at``, P@n, real-valued (Euclidean on h)
    and binary (Hamming on b); plus the mean over pairs. ``max_queries`` caps queries per pair
    (the first ones of the split, for cheap dev checks)."""
    h = {}
    for m, mod in data.modalities.items():
        for s in {split, database_split(mod)}:
            rows = mod.splits[s][:max_queries] if s == split and max_queries else mod.splits[s]
            h[m, s] = (codes(model, m, mod.features[rows]), mod.labels[rows])
    pairs, results = [(q, t) for q in data.modalities for t in data.modalities if q != t], {}
    kinds = ("real", "binary") if binary else ("real",)
    for q, t in pairs:
        (hq, yq), (hd, yd) = h[q, split], h[t, database_split(data.modalities[t])]
        # What a random ranking scores: the mean fraction of the database relevant to a query.
        chance = float(np.mean(np.concatenate([relevance(yq[i:i + 1024], yd).mean(1) for i in range(0, len(yq), 1024)])))
        results[f"{q}->{t}"] = {"chance": chance, "queries": len(yq), "database": len(yd)}
        for kind in kinds:
            a, b = (hq, hd) if kind == "real" else (binary_codes(model, hq), binary_codes(model, hd))
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
            binary_codes(model, h[q, split][0]).astype(np.float32), fused.astype(np.float32), h[q, split][1], h[q, db][1],
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
