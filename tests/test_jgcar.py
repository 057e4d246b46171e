"""JGCAR (Wang, Chen, Zhuo, Huang & Tian, ACM MM 2018): the de-correlation and bi-rank losses,
intra-modal triplets, the co-attention's batched and aligned forms, optimisers, keyword labels and
a short end-to-end run."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import SYNTHETIC_SMALL as DATA
from xmr.data.base import Split
from xmr.data.keyword_labels import LABEL_NAMES, keyword_labels
from xmr.interface import BERT_DIM, BERT_MAX_LEN
from xmr.models import create_model, get_preset
from xmr.models.jgcar import bi_rank, decorrelation_loss, intra_triplet_loss
from xmr.train import TrainConfig, train

IMAGE_DIM, REGIONS, MAX_LEN = 12, 4, 7


def small_model(**kw):
    torch.manual_seed(0)
    args = dict(vocab_size=30, image_dim=IMAGE_DIM, n_regions=REGIONS, max_len=MAX_LEN, word_dim=16,
                phrase_dim=16, d=16, att_dim=8, negatives=3, dropout=0.0)
    return create_model("jgcar", **{**args, **kw})


def batch(n: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, MAX_LEN + 1, (n,), generator=g)
    tokens = torch.randint(4, 30, (n, MAX_LEN), generator=g)
    tokens[torch.arange(MAX_LEN)[None] >= lengths[:, None]] = 0
    labels = torch.zeros(n, 3, dtype=torch.int8)
    labels[torch.arange(n), torch.arange(n) % 3] = 1
    return {"image": torch.randn(n, REGIONS, IMAGE_DIM, generator=g), "tokens": tokens, "lengths": lengths,
            "labels": labels, "same_image": torch.zeros(n, n, dtype=torch.bool)}


def test_decorrelation_is_zero_for_decorrelated_features_and_positive_otherwise():
    # Each feature dimension is non-zero on its own batch item only: centred cross-products cancel.
    x = torch.zeros(4, 3, 4)
    for k in range(4):
        x[k, :, k] = torch.tensor([1.0, -2.0, 0.5])
    x = torch.cat([x, -x])  # zero batch mean at every position
    assert decorrelation_loss(x).item() == pytest.approx(0.0, abs=1e-7)
    y = x.clone()
    y[..., 1] = y[..., 0] + 0.1 * y[..., 1]  # dimension 1 follows dimension 0
    assert decorrelation_loss(y).item() > 0.1
    # Hand computation for 2 items, 1 position, 2 dims: C = [[1, 1], [1, 1]] -> 1/2 (4 - 2) = 1.
    z = torch.tensor([[[1.0, 1.0]], [[-1.0, -1.0]]])
    assert decorrelation_loss(z).item() == pytest.approx(1.0)
    # Padding positions are left out: junk there changes nothing.
    mask = torch.tensor([[True, False], [True, False]])
    padded = torch.cat([z, torch.randn(2, 1, 2) * 50], 1)
    assert decorrelation_loss(padded, mask).item() == pytest.approx(1.0)


def test_bi_rank_falls_as_the_positive_cosine_rises():
    cross = torch.tensor([[0.3, 0.1, -0.2]])
    intra = torch.tensor([[0.5, 0.2, 0.0]])
    values = [bi_rank(torch.tensor([p]), cross, intra, 10.0).item() for p in (-0.5, 0.0, 0.4, 0.9)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert 0 < values[-1] < 2
    # Hand computation at gamma = 1, one negative each.
    p, c, i = 0.5, 0.2, 0.1
    want = 2 - math.exp(p) / (math.exp(p) + math.exp(c)) - math.exp(p) / (math.exp(1) + math.exp(i))
    got = bi_rank(torch.tensor([p]), torch.tensor([[c]]), torch.tensor([[i]]), 1.0).item()
    assert got == pytest.approx(want, rel=1e-6)


def test_intra_triplet_matches_hand_computation():
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = torch.tensor([[1, 0], [1, 0], [0, 1]])
    # Triplets (anchor, pos, neg): (0,1,2), (1,0,2); item 2 has no positive.
    omega = emb @ emb.T
    want = ((0.2 - omega[0, 1] + omega[0, 2]).clamp(min=0) + (0.2 - omega[1, 0] + omega[1, 2]).clamp(min=0)) / 2
    assert intra_triplet_loss(emb, labels, 0.2).item() == pytest.approx(want.item())
    assert intra_triplet_loss(emb, torch.zeros(3, 2), 0.2).item() == 0.0


@torch.no_grad()
def test_aligned_pairs_equal_all_pairs_and_padding_is_ignored():
    model = small_model(pair_chunk=5).eval()
    b = batch(6)
    img, txt = model.encode_images(b), model.encode_texts(b)
    full = model.similarity(img, txt)
    rows, cols = torch.arange(6).repeat_interleave(6), torch.arange(6).repeat(6)
    aligned = model.pair_similarity({k: v[rows] for k, v in img.items()}, {k: v[cols] for k, v in txt.items()})
    torch.testing.assert_close(aligned.view(6, 6), full, rtol=0, atol=1e-5)
    assert full.abs().max() <= 1 + 1e-6  # cosines
    # Different token ids in padding positions change nothing.
    junk = dict(b, tokens=b["tokens"].clone())
    pad = torch.arange(MAX_LEN)[None] >= b["lengths"][:, None]
    junk["tokens"][pad] = 7
    torch.testing.assert_close(model.similarity(img, model.encode_texts(junk)), full, rtol=0, atol=1e-6)
    # The co-attention's attention maps are distributions over regions and over real words.
    a_v, a_s = model.attention_maps(img, txt)
    torch.testing.assert_close(a_v.sum(-1), torch.ones(6))
    assert (a_s[pad[:, : a_s.size(1)]] == 0).all()


def bert_batch(n: int, seed: int = 2) -> dict:
    """A batch with MiniLM-like token states (right-padded to BERT_MAX_LEN) instead of token ids."""
    g = torch.Generator().manual_seed(seed)
    b = batch(n, seed)
    lengths = torch.randint(2, 9, (n,), generator=g)
    mask = torch.arange(BERT_MAX_LEN)[None] < lengths[:, None]
    states = torch.randn(n, BERT_MAX_LEN, BERT_DIM, generator=g) * mask[..., None]
    return {**b, "bert": states.half(), "bert_mask": mask}


@torch.no_grad()
def test_bert_words_normalised_globals_and_the_global_weight():
    model = small_model(text_input="bert", normalize=True).eval()
    assert model.inputs.text == ("tokens", "bert") and model.inputs.labels
    b = bert_batch(5)
    img, txt = model.encode_images(b), model.encode_texts(b)
    assert txt["S"].shape[:2] == (5, BERT_MAX_LEN)
    torch.testing.assert_close(img["g"].norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(txt["g"].norm(dim=-1), torch.ones(5))
    # The words are the states: junk in padding positions changes no score, a real word does.
    junk = dict(b, bert=b["bert"].clone())
    junk["bert"][~b["bert_mask"]] = 9.0
    coatt = model.similarity(img, txt)
    torch.testing.assert_close(model.similarity(img, model.encode_texts(junk)), coatt, rtol=0, atol=1e-5)
    moved = dict(b, bert=b["bert"].clone())
    moved["bert"][:, 0] += 1.0
    assert not torch.allclose(model.similarity(img, model.encode_texts(moved)), coatt)
    # global_weight w adds w * Omega to the co-attentive cosine, in both scoring forms.
    fused = small_model(text_input="bert", normalize=True, global_weight=2.0).eval()
    scores = fused.similarity(img, txt)
    torch.testing.assert_close(scores, coatt + 2.0 * img["g"] @ txt["g"].T)
    torch.testing.assert_close(fused.pair_similarity(img, txt), scores.diagonal())
    with pytest.raises(ValueError, match="text_input"):
        small_model(text_input="glove")


def test_global_word_mean_adds_the_projected_mean_word_to_the_global_sentence_only():
    """global_word_mean: S^ = mean(S) + W mean(words), the words' padding ignored; the co-attentive
    score does not read it; J_G trains the projection."""
    plain = small_model(text_input="bert").eval()
    model = small_model(text_input="bert", global_word_mean=True).eval()
    model.load_state_dict(plain.state_dict(), strict=False)  # the same weights but W
    b = bert_batch(5)
    with torch.no_grad():
        img, txt, base = model.encode_images(b), model.encode_texts(b), plain.encode_texts(b)
        mask = b["bert_mask"]
        mean_word = (b["bert"].float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(txt["g"], base["g"] + model.word_mean(mean_word))
        torch.testing.assert_close(txt["S"], base["S"])
        torch.testing.assert_close(model.similarity(img, txt), plain.similarity(img, base))
        junk = dict(b, bert=b["bert"].clone())
        junk["bert"][~mask] = 9.0
        torch.testing.assert_close(model.encode_texts(junk)["g"], txt["g"], rtol=0, atol=1e-5)
    model.train()
    model.global_loss(model.encode_images(b), model.encode_texts(b), b)["j_g"].backward()
    assert model.word_mean.weight.grad.abs().sum() > 0
    assert small_model(text_input="bert").word_mean is None


def test_bert_model_trains_and_its_loss_reaches_the_encoders():
    model = small_model(text_input="bert", normalize=True, global_weight=1.0).train()
    b = bert_batch(6)
    parts = model.loss(model.encode_images(b), model.encode_texts(b), b)
    parts["loss"].backward()
    assert model.text.convs[0].weight.grad.abs().sum() > 0 and model.image_fc.weight.grad.abs().sum() > 0
    assert model.word_embed is None  # no learned W_e when the words are MiniLM states


def test_beta_one_is_the_global_model_and_loss_parts():
    model = small_model(beta=1.0).eval()
    b = batch(6)
    img, txt = model.encode_images(b), model.encode_texts(b)
    torch.testing.assert_close(model.similarity(img, txt), img["g"] @ txt["g"].T)
    parts = model.loss(img, txt, b)
    assert "j_c" not in parts and parts["loss"].item() == pytest.approx(parts["j_g"].item())
    joint = small_model(beta=0.5).train()
    parts = joint.loss(joint.encode_images(b), joint.encode_texts(b), b)
    want = 0.5 * parts["j_g"] + 0.5 * parts["j_c"]
    assert parts["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    parts["loss"].backward()
    assert all(p.grad is not None for p in joint.coattention_parameters())


@torch.no_grad()
def test_j1_takes_the_hardest_negative_after_the_warm_up():
    b = batch(6)
    b["same_image"][0, 1] = b["same_image"][1, 0] = True  # rows 0 and 1 share an image
    model = small_model(beta=1.0, j1_max_violation=True, warmup_epochs=1).eval()
    img, txt = model.encode_images(b), model.encode_texts(b)
    cost = (0.2 + img["g"] @ txt["g"].T - (img["g"] * txt["g"]).sum(1)[:, None]).clamp(min=0)  # image rows
    cost_t = (0.2 + img["g"] @ txt["g"].T - (img["g"] * txt["g"]).sum(1)[None]).clamp(min=0)  # caption columns
    blocked = torch.eye(6, dtype=torch.bool) | b["same_image"]
    cost, cost_t = cost.masked_fill(blocked, 0), cost_t.masked_fill(blocked, 0)
    model.on_epoch_start(0)  # the warm-up epoch: the paper's mean over all triplets
    assert model.loss(img, txt, b)["j1"].item() == pytest.approx(((cost.sum() + cost_t.sum()) / 30).item())
    model.on_epoch_start(1)  # then each query's hardest negative, averaged over the queries
    want = (cost.max(1)[0].sum() + cost_t.max(0)[0].sum()) / 6
    assert model.loss(img, txt, b)["j1"].item() == pytest.approx(want.item())
    assert want > (cost.sum() + cost_t.sum()) / 30
    plain = small_model(beta=1.0).eval()
    plain.on_epoch_start(3)  # the paper's J1 at every epoch
    pi, pt = plain.encode_images(b), plain.encode_texts(b)
    omega = pi["g"] @ pt["g"].T
    c = (0.2 + omega - omega.diagonal()[:, None]).clamp(min=0).masked_fill(blocked, 0)
    ct = (0.2 + omega - omega.diagonal()[None]).clamp(min=0).masked_fill(blocked, 0)
    assert plain.loss(pi, pt, b)["j1"].item() == pytest.approx(((c.sum() + ct.sum()) / 30).item())


def test_paper_optimisers_split_the_parameters():
    model = small_model()
    recipe = {**get_preset("jgcar", "paper").train, "weight_decay": 1e-8, "momentum": 0.99}
    sgd, rms = model.build_optimizers(model.stages[0], recipe)
    assert isinstance(sgd, torch.optim.SGD) and isinstance(rms, torch.optim.RMSprop)
    ids = [id(p) for o in (sgd, rms) for g in o.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each exactly once
    assert {id(p) for p in rms.param_groups[0]["params"]} == {id(p) for p in model.coattention_parameters()}


def test_negatives_never_come_from_the_pairs_own_image():
    model = small_model(negatives=30).eval()
    b = batch(6)
    b["same_image"][0, 1] = b["same_image"][1, 0] = True
    neg_txt, neg_img = model.pick_negatives(model.encode_images(b), model.encode_texts(b), b)
    assert neg_txt.shape == (6, 4)  # at most 6 - 2 usable for rows 0 and 1
    assert 1 not in neg_txt[0].tolist() and 0 not in neg_txt[0].tolist()
    assert all(k not in neg_img[k].tolist() for k in range(6))


def test_keyword_labels_vote_over_captions():
    caps = ["a dog runs", "the dog on grass", "a puppy", "a cat", "grass field",
            "a man", "a woman", "people", "a guy", "a car"]
    split = Split("x", ["a", "b"], caps, 5)
    labels = keyword_labels(split)
    named = [{LABEL_NAMES[c] for c in np.flatnonzero(row)} for row in labels]
    assert named == [{"dog", "grass"}, {"man"}]


def test_train_tiny_end_to_end(feature_cache, tmp_path):
    best = train(TrainConfig(model="jgcar", preset="tiny", data=DATA, out=str(tmp_path / "run"),
                             cache=str(feature_cache), overrides={"epochs": 2, "dev_rerank_k": 20},
                             progress=False))
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[1]["train_loss"] < rows[0]["train_loss"]
    assert {"train_j1", "train_j4", "train_j_c"} <= set(rows[0])
    assert best["k"] == 20 and best["rsum"] > 150, best  # chance is ~51


@pytest.mark.slow
def test_minilm_tail_feeds_the_phrases_and_trains_at_its_own_rate():
    """text_tail_layers = 1: the words of Eq. 1 are MiniLM's last layer run on the cached layer-5
    states (declared as the input it needs), trained at text_tail_lr_scale times the rate."""
    assert small_model(text_input="bert").inputs.bert_tail == 0
    with pytest.raises(ValueError, match="text_input='bert'"):
        small_model(text_tail_layers=1)
    model = small_model(text_input="bert", text_tail_layers=1, text_tail_lr_scale=0.5)
    assert model.inputs.bert_tail == 1
    groups = model.build_optimizers(model.stages[0], {"lr": 1e-3, "weight_decay": 0.0, "optimizer": "adam"})[0].param_groups
    tail = {id(p) for p in model.text_tail.parameters()}
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(5e-4)]
    assert {id(p) for p in groups[1]["params"]} == tail and not tail & {id(p) for p in groups[0]["params"]}
    b = bert_batch(4)
    model.eval()
    txt = model.encode_texts(b)
    # The phrases read the tail's output, not the cached states themselves.
    with torch.no_grad():
        tail_states = model.text_tail(b["bert"], b["bert_mask"])
    assert not torch.allclose(tail_states, b["bert"].float())
    torch.testing.assert_close(model.text(tail_states, b["bert_mask"].sum(1))[0], txt["S"])
    txt["g"].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.text_tail.parameters() if p.dim() > 1)
