"""The label protocol for pair-trained models (``xmr.eval.label_pairs``): hand-checked mAP for an
embedding model, unlabelled items left out, the two-step order of a pairwise model, and
``xmr eval --protocol labels`` on trained runs of both kinds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xmr.cli import main
from xmr.data.base import Split
from xmr.data.pairs import PairData
from xmr.data.text import Vocab
from xmr.eval.label_pairs import _ordering_scores, label_protocol
from xmr.models.base import RetrievalModel


class Fixed(RetrievalModel):
    """Images and captions embedded by their given 2-d features / a per-caption vector table."""

    def __init__(self, caption_vectors: np.ndarray, pairwise: bool = False):
        super().__init__()
        self.table = torch.as_tensor(caption_vectors, dtype=torch.float32)
        self.pairwise = pairwise

    def encode_images(self, batch):
        return {"emb": F.normalize(batch["image"], dim=-1)}

    def encode_texts(self, batch):
        return {"emb": F.normalize(self.table[batch["row"]], dim=-1)}

    def indexed_pair_similarity(self, img, txt, i_rows, t_rows):
        return -(img["emb"][i_rows] * txt["emb"][t_rows]).sum(-1)  # reverses the first stage


def pair_data(features: np.ndarray, caption_vectors: np.ndarray, captions_per_image: int = 1) -> PairData:
    n = len(features)
    captions = [f"caption {i}" for i in range(n * captions_per_image)]
    split = Split("x", [str(i) for i in range(n)], captions, captions_per_image, features=features.astype(np.float32))
    data = PairData(split, Vocab.build(captions), 8)
    data.text_features = {"row": np.arange(len(captions))}  # the caption's row in the model's table
    return data


def angles(deg) -> np.ndarray:
    r = np.radians(np.asarray(deg, dtype=np.float64))
    return np.stack([np.cos(r), np.sin(r)], 1)


def test_embedding_model_map_matches_hand_computation_and_skips_unlabelled_items():
    # Database: 4 training images at 0, 30, 60, 90 degrees, labels A, B, A, none (left out).
    # One query image at 0 degrees with label A: it ranks 0 (A), 30 (B), 60 (A): AP = (1 + 2/3) / 2.
    db_vectors = angles([0, 30, 60, 90])
    q_vectors = angles([0])
    labels_db = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    labels_q = np.array([[1, 0]])
    # Captions: the query caption points at 60 degrees; the database captions as their images.
    model = Fixed(np.concatenate([angles([60]), db_vectors]))
    queries = pair_data(q_vectors, angles([60]))
    database = pair_data(db_vectors, db_vectors)
    database.text_features = {"row": np.arange(1, 5)}
    out = label_protocol(model, queries, database, labels_q, labels_db, map_at=2)
    i2t, t2i = out["pairs"]["image->text"], out["pairs"]["text->image"]
    assert i2t["database"] == t2i["database"] == 3 and i2t["queries"] == 1
    assert i2t["real"]["mAP"] == pytest.approx((1 + 2 / 3) / 2)
    assert i2t["real"]["mAP@2"] == pytest.approx(1.0) and i2t["real"]["P@1"] == 1.0
    # The caption at 60 degrees ranks 60 (A), 30 (B), 0 (A): the same AP; chance = 2 of 3 relevant.
    assert t2i["real"]["mAP"] == pytest.approx((1 + 2 / 3) / 2)
    assert t2i["chance"] == pytest.approx(2 / 3) and out["ranking"] == "similarity"
    assert out["mean_mAP"]["real"] == pytest.approx((1 + 2 / 3) / 2)


def test_pairwise_model_reranks_its_top_k_above_the_rest():
    db = angles([0, 10, 20, 30, 40])
    model = Fixed(db, pairwise=True)
    model.embed = lambda reps: reps["emb"]  # first stage: the same vectors
    img = {"emb": F.normalize(torch.as_tensor(angles([0]), dtype=torch.float32), dim=-1)}
    txt = {"emb": F.normalize(torch.as_tensor(db, dtype=torch.float32), dim=-1)}
    scores = _ordering_scores(model, img, txt, torch.tensor([0]), True, (img["emb"], txt["emb"]), 3, 64)
    order = scores.argsort(1, descending=True)[0].tolist()
    assert order == [2, 1, 0, 3, 4]  # the top 3 by the first stage, reversed by the pair score; then the rest


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["vsepp_index", "jgcar_index"])
def test_eval_protocol_labels_on_a_pair_run(fixture, request, feature_cache, tmp_path, capsys):
    run, _ = request.getfixturevalue(fixture)
    out = tmp_path / "labels.json"
    args = ["eval", run, "--protocol", "labels", "--cache", str(feature_cache), "--json", str(out), "--map-at", "50"]
    assert main(args + (["--two-step", "5"] if fixture == "jgcar_index" else [])) == 0
    res = json.loads(out.read_text())
    assert set(res["pairs"]) == {"image->text", "text->image"}
    for r in res["pairs"].values():
        assert 0 <= r["chance"] <= 1 and 0 <= r["real"]["mAP"] <= 1 and "mAP@50" in r["real"]
    assert res["ranking"] == ("two-step K=5 (first stage: embed)" if fixture == "jgcar_index" else "similarity")
    assert "database = training split" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--kshot"):
        main(["eval", run, "--protocol", "labels", "--cache", str(feature_cache), "--kshot", "1"])
