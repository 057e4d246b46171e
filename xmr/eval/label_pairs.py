"""The label protocol of ``xmr.eval.labelled`` (Song & Tan 2017, CMMN's) for a model trained on
image-sentence pairs, so that CMMN and the pair models are measured on one yardstick.

Queries are a split's images (-> captions) and captions (-> images); the database is the
training split of the other modality. An image's labels are its split's labels (keyword classes
voted from its captions on Flickr8k, ``xmr.data.keyword_labels``), a caption has its image's, and
items without any class are left out, as ``xmr.features.labelled.flickr8k_labelled`` does for
CMMN. Relevance is sharing a label; the metrics are ``xmr.eval.label_ranking.ranking_metrics``
(mAP over the whole database, mAP@n, P@n), with the mean fraction of relevant items as chance.

Each query ranks the database by the model's own score: ``similarity`` for an embedding model;
for a pairwise model its two-step list (the top ``k`` by ``embed`` re-ranked by the pair score,
then every other item in first-stage order, as ``xmr.eval.two_step`` ranks), since scoring every
training caption pairwise for every query is what two-step retrieval exists to avoid.
"""
from __future__ import annotations

import numpy as np
import torch

from xmr.data.pairs import PairData
from xmr.eval.evaluate import encode, score_rows, take
from xmr.eval.label_ranking import ranking_metrics, relevance
from xmr.eval.recall import finite_or_last
from xmr.eval.two_step import inner_product_form, rerank
from xmr.models.base import Reps, RetrievalModel

P_AT = (1, 10, 100)


def _ordering_scores(model: RetrievalModel, queries: Reps, items: Reps, q: torch.Tensor, query_is_image: bool,
                     first: tuple[torch.Tensor, torch.Tensor] | None, k: int, caption_chunk: int) -> torch.Tensor:
    """(B, N) scores that order the items for the query rows ``q`` as the model ranks them (higher first)."""
    if first is None:  # an embedding model: its similarity against every item
        if query_is_image:
            return score_rows(model, take(queries, q), items, caption_chunk)
        return model.similarity(items, take(queries, q)).T
    q_emb, i_emb = first
    coarse = finite_or_last(q_emb[q] @ i_emb.T).double()
    cand = coarse.topk(min(k, coarse.size(1)), dim=1).indices
    fine = rerank(model, queries, items, q, cand, query_is_image)
    # The shortlist above every other item, in pair-score order: its j-th best gets top + K - j.
    place = torch.empty_like(cand)
    place.scatter_(1, fine.argsort(dim=1, descending=True, stable=True),
                   torch.arange(cand.size(1)).expand_as(cand).contiguous())
    top = coarse.max(1, keepdim=True).values + 1
    return coarse.scatter(1, cand, top + (cand.size(1) - place).double())


def label_protocol(model: RetrievalModel, queries: PairData, database: PairData, query_labels: np.ndarray,
                   database_labels: np.ndarray, k: int = 100, map_at: int | None = 500,
                   query_block: int = 256, progress: bool = False) -> dict:
    """mAP, mAP@``map_at`` and P@n of ``queries``' images -> ``database``' captions and captions ->
    images, labels per image ``(n_images, n_classes)``; laid out as ``xmr.eval.labelled`` (the
    ``real`` entry, as there is no hash code), with ``ranking`` naming how the database was ranked."""
    model.eval()
    q_img, q_txt = encode(model, queries, progress=progress)
    d_img, d_txt = encode(model, database, progress=progress)
    pairwise = model.pairwise
    if pairwise:
        q_img_e, q_txt_e = inner_product_form(model.embed(q_img), model.embed(q_txt), model.metric)
        d_img_e, d_txt_e = inner_product_form(model.embed(d_img), model.embed(d_txt), model.metric)
    label = {("q", "image"): np.asarray(query_labels) != 0, ("d", "image"): np.asarray(database_labels) != 0}
    label["q", "text"] = label["q", "image"][queries.caption_image]
    label["d", "text"] = label["d", "image"][database.caption_image]
    caption_chunk = model.score_block[1]
    results = {}
    for name, query_is_image, (qs, items) in (("image->text", True, (q_img, d_txt)),
                                              ("text->image", False, (q_txt, d_img))):
        q_mod, d_mod = ("image", "text") if query_is_image else ("text", "image")
        q_keep = np.flatnonzero(label["q", q_mod].any(1))
        d_keep = np.flatnonzero(label["d", d_mod].any(1))
        if not len(q_keep) or not len(d_keep):
            raise ValueError(f"{name}: no labelled {'queries' if not len(q_keep) else 'database items'}")
        items, d_labels = take(items, torch.from_numpy(d_keep)), label["d", d_mod][d_keep]  # the labelled database
        first = None
        if pairwise:
            rows = torch.from_numpy(d_keep)
            first = (q_img_e, d_txt_e[rows]) if query_is_image else (q_txt_e, d_img_e[rows])
        sums: dict[str, float] = {}
        chance = 0.0
        for s in range(0, len(q_keep), query_block):
            q = torch.from_numpy(q_keep[s: s + query_block])
            scores = _ordering_scores(model, qs, items, q, query_is_image, first, k, caption_chunk)
            rel = relevance(label["q", q_mod][q.numpy()], d_labels)
            chance += float(rel.mean(1).sum())
            for key, values in ranking_metrics(-scores.numpy(), rel, map_at=map_at, p_at=P_AT).items():
                sums[key] = sums.get(key, 0.0) + float(values.sum())
        n = len(q_keep)
        results[name] = {"chance": chance / n, "queries": n, "database": int(len(d_keep)),
                         "real": {key: total / n for key, total in sums.items()}}
    mean = {"real": float(np.mean([r["real"]["mAP"] for r in results.values()])),
            "chance": float(np.mean([r["chance"] for r in results.values()]))}
    return {"pairs": results, "mean_mAP": mean,
            "ranking": f"two-step K={k} (first stage: embed)" if pairwise else "similarity"}
