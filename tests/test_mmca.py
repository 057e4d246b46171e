"""MMCA (Wei et al., CVPR 2020): cross-attention mixing and masking, the score's two branches,
the batched B x B cross pass against a per-pair loop, gradients, training on the i0.c0 shortlist
with a warm-up, evaluation with another alpha, and a short end-to-end run."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from xmr import checkpoint
from xmr.errors import ConfigError
from xmr.losses import triplet_ranking_loss
from xmr.models import create_model, get_preset
from xmr.models.mmca import MMCA
from conftest import SYNTHETIC_SMALL as DATA
from xmr.cli import main
from xmr.eval.evaluate import encode
from xmr.runs import open_run
from xmr.train import TrainConfig, train

IMAGE_DIM, BERT_DIM, REGIONS, WIDTH = 20, 24, 5, 9


def small_model(**kw) -> MMCA:
    torch.manual_seed(0)
    args = dict(vocab_size=10, image_dim=IMAGE_DIM, d=32, heads=4, filters=8, bert_dim=BERT_DIM, dropout=0.0)
    return create_model("mmca", **{**args, **kw})


def batch(n_img: int, lengths: list[int], seed: int = 1) -> dict:
    """Random regions and fp16 BERT-like states padded to WIDTH; padding states are nonzero junk."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(WIDTH)[None] < torch.tensor(lengths)[:, None]
    return {"image": torch.randn(n_img, REGIONS, IMAGE_DIM, generator=g),
            "bert": torch.randn(len(lengths), WIDTH, BERT_DIM, generator=g).half(),
            "bert_mask": mask}


@torch.no_grad()
def scores(model: MMCA, b: dict):
    img, txt = model.encode_images(b), model.encode_texts(b)
    i1, c1 = model.cross_embeddings(img, txt)
    return img, txt, i1, c1, model.similarity(img, txt)


def test_cross_unit_mixes_modalities_and_ignores_padding():
    model = small_model().eval()
    b = batch(3, [4, 7, 2, 5])
    img, txt, i1, c1, s = scores(model, b)
    assert i1.shape == c1.shape == (3, 4, 32) and s.shape == (3, 4)

    # Words reach the regions: new states for sentence 1's real words change its regions' i1 (for
    # every image), and only sentence 1's column.
    changed = dict(b, bert=b["bert"].clone())
    changed["bert"][1, :7] = torch.randn(7, BERT_DIM).half()
    _, _, i1b, c1b, sb = scores(model, changed)
    assert (i1b[:, 1] - i1[:, 1]).abs().amax(-1).min() > 1e-3
    torch.testing.assert_close(i1b[:, [0, 2, 3]], i1[:, [0, 2, 3]], rtol=0, atol=1e-6)
    assert (sb[:, 1] - s[:, 1]).abs().min() > 1e-4
    # Regions reach the words: another image gives the same sentence another c1.
    assert (c1[0] - c1[1]).abs().amax() > 1e-3

    # Padding states (bert_mask False) change nothing: i0/c0, i1/c1 and S are the same.
    junk = dict(b, bert=b["bert"].clone())
    pad = ~b["bert_mask"]
    junk["bert"][pad] = (100 * torch.randn(int(pad.sum()), BERT_DIM)).half()
    img2, txt2, i1c, c1c, sc = scores(model, junk)
    for new, old in ((img2["i0"], img["i0"]), (txt2["c0"], txt["c0"]), (i1c, i1), (c1c, c1), (sc, s)):
        torch.testing.assert_close(new, old, rtol=0, atol=1e-6)


def test_alpha_zero_is_the_self_attention_score():
    model = small_model(alpha=0.0).eval()
    img, txt, i1, c1, s = scores(model, batch(3, [3, 6, 9, 1, 4]))
    torch.testing.assert_close(s, img["i0"] @ txt["c0"].T, rtol=0, atol=0)
    assert torch.equal(model.embed(img), img["i0"]) and torch.equal(model.embed(txt), txt["c0"])
    # ...and with alpha = 0.2 the cross term is added on top, S = i0.c0 + 0.2 i1.c1.
    model.alpha = 0.2
    s2 = model.similarity(img, txt)
    torch.testing.assert_close(s2, img["i0"] @ txt["c0"].T + 0.2 * (i1 * c1).sum(-1), rtol=0, atol=1e-6)
    assert (s2 - s).abs().max() > 1e-3


@torch.no_grad()
def reference_scores(model: MMCA, b: dict) -> torch.Tensor:
    """S(I, T) for each pair run alone through the model's modules, the sentence cut to its own
    length (no padding anywhere), the cross unit applied to the stacked Y = (R; E) (Eq. 8-11)."""
    lengths = b["bert_mask"].sum(1).tolist()
    out = torch.empty(len(b["image"]), len(lengths))
    for i in range(len(b["image"])):
        regions = model.image_fc(b["image"][i: i + 1])  # (1, K, d)
        i0 = F.normalize(model.image_unit(regions).mean(1), dim=-1)
        for j, n in enumerate(lengths):
            states = b["bert"][j: j + 1, :n].float()
            ones = torch.ones(1, n, dtype=torch.bool)
            c0 = F.normalize(model.text_cnn(states, ones), dim=-1)
            cross_regions = model.cross_in(regions)  # R itself unless the cross module is narrower
            y = torch.cat([cross_regions, model.word_fc(states)], dim=1)  # (1, K + n, cross width)
            yc = model.cross_unit(y)
            k = cross_regions.size(1)
            i1 = F.normalize(yc[:, :k].mean(1), dim=-1)
            c1 = F.normalize(model.cross_cnn(yc[:, k:], ones), dim=-1)
            out[i, j] = (i0 * c0).sum() + model.alpha * (i1 * c1).sum()
    return out


@pytest.mark.parametrize("cross", [{}, dict(cross_dim=16, cross_heads=2, cross_filters=6)])
def test_batched_similarity_matches_per_pair_loop(cross):
    model = small_model(**cross).eval()
    b = batch(4, [3, 8, 1, 5, 6, 2], seed=5)  # widest sentence 8 < WIDTH 9: trimmed padding too
    expected = reference_scores(model, b)
    img, txt = model.encode_images(b), model.encode_texts(b)
    results = []
    for chunk in (1, 3, 5, 7, 1000):
        model.pair_chunk = chunk
        with torch.no_grad():
            results.append(model.similarity(img, txt))
    torch.testing.assert_close(results[-1], expected, rtol=0, atol=1e-5)
    for r in results[:-1]:
        torch.testing.assert_close(r, results[-1], rtol=0, atol=1e-6)
    # Blocks of the matrix (as evaluation asks for them) equal the whole.
    part = {k: v[2:5] for k, v in txt.items()}
    with torch.no_grad():
        torch.testing.assert_close(model.similarity({k: v[1:3] for k, v in img.items()}, part),
                                   results[-1][1:3, 2:5], rtol=0, atol=1e-6)


@pytest.mark.parametrize("grad_checkpoint,extra", [(True, {}), (False, {}),
                                                   (False, dict(cross_dim=16, train_negatives=2))])
def test_loss_is_finite_and_reaches_every_branch(grad_checkpoint, extra):
    model = small_model(pair_chunk=5, grad_checkpoint=grad_checkpoint, **extra).train()
    b = batch(6, [4, 7, 2, 5, 9, 3], seed=2)
    b["same_image"] = torch.zeros(6, 6, dtype=torch.bool)
    b["same_image"][0, 3] = b["same_image"][3, 0] = True
    out = model.loss(model.encode_images(b), model.encode_texts(b), b)
    loss = out["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    named = dict(model.named_parameters())
    for name in ("image_fc.weight", "image_unit.qkv.weight", "text_cnn.convs.0.weight",
                 "text_cnn.convs.2.weight", "text_cnn.fc.weight", "word_fc.weight", "cross_unit.qkv.weight",
                 "cross_unit.out.weight", "cross_unit.ff1.weight", "cross_cnn.convs.1.weight", "cross_cnn.fc.weight"):
        grad = named[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    if "cross_dim" in extra:
        assert named["cross_in.weight"].grad.abs().sum() > 0


def test_checkpointed_gradients_equal_plain_ones():
    grads = []
    for ckpt in (True, False):
        model = small_model(pair_chunk=4, grad_checkpoint=ckpt).train()
        b = batch(5, [4, 7, 2, 5, 9], seed=3)
        model.loss(model.encode_images(b), model.encode_texts(b), b)["loss"].backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6, msg=k)


def shortlist_case(n: int = 8, k: int = 2, **kw):
    model = small_model(train_negatives=k, **kw).train()
    b = batch(n, [3, 7, 2, 5, 9, 4, 6, 8][:n], seed=4)
    positives = torch.zeros(n, n, dtype=torch.bool)
    positives[0, 3] = positives[3, 0] = True  # captions 0 and 3 describe one image
    b["same_image"] = positives
    return model, b, model.encode_images(b), model.encode_texts(b)


def test_shortlist_scores_are_S_on_the_hardest_i0c0_negatives():
    model, b, img, txt = shortlist_case(k=2)
    s = model.shortlist_scores(img, txt, b["same_image"])
    with torch.no_grad():
        full = model.similarity(img, txt)
        s0 = img["i0"] @ txt["c0"].T
    kept = torch.isfinite(s)
    torch.testing.assert_close(s[kept].detach(), full[kept], rtol=0, atol=1e-5)  # S itself where kept
    assert kept.diagonal().all()
    assert not kept[0, 3] and not kept[3, 0]  # a second positive is never a negative
    negatives = s0.masked_fill(torch.eye(8, dtype=torch.bool) | b["same_image"], float("-inf"))
    rows_hard = negatives.topk(2, dim=1).indices  # each image's two hardest captions by i0.c0
    cols_hard = negatives.topk(2, dim=0).indices  # each caption's two hardest images
    assert kept.gather(1, rows_hard).all() and kept.gather(0, cols_hard).all()
    # Nothing else: every kept pair is a positive or one of those.
    expected = torch.eye(8, dtype=torch.bool)
    expected.scatter_(1, rows_hard, True)
    expected.scatter_(0, cols_hard, True)
    assert torch.equal(kept, expected)


def test_shortlist_of_every_negative_is_the_all_pairs_loss():
    model, b, img, txt = shortlist_case(k=7)  # B - 1 negatives: the whole batch
    full = triplet_ranking_loss(model.similarity(img, txt), model.margin, True, b["same_image"])
    torch.testing.assert_close(model.loss(img, txt, b)["loss"], full, rtol=1e-5, atol=1e-5)
    model.train_negatives = 0  # the paper's path
    torch.testing.assert_close(model.loss(img, txt, b)["loss"], full, rtol=1e-5, atol=1e-5)


def test_warmup_sums_violations_then_takes_the_hardest():
    model, b, img, txt = shortlist_case(k=3, warmup_epochs=1)
    scores = model.shortlist_scores(img, txt, b["same_image"])
    model.on_epoch_start(0)
    summed = model.loss(img, txt, b)["loss"]
    torch.testing.assert_close(summed, triplet_ranking_loss(scores, model.margin, False, b["same_image"]))
    model.on_epoch_start(1)
    hardest = model.loss(img, txt, b)["loss"]
    torch.testing.assert_close(hardest, triplet_ranking_loss(scores, model.margin, True, b["same_image"]))
    assert summed > hardest > 0
    with pytest.raises(ValueError, match="train_negatives"):
        small_model(train_negatives=-1)


def test_presets():
    paper = get_preset("mmca", "paper")
    assert paper.model["heads"] == 16 and paper.model["d"] == 256 and paper.model["filters"] == 256
    assert paper.train["epochs"] == 20 and paper.train["lr_decay_epochs"] == [10]
    assert paper.train["batch_size"] == 64 and paper.train["lr"] == 2e-4
    for name in ("paper", "cpu", "tiny"):
        model = create_model("mmca", vocab_size=5, image_dim=IMAGE_DIM, bert_dim=BERT_DIM,
                             **get_preset("mmca", name).model)
        assert model.pairwise and model.inputs.image == "regions" and "bert" in model.inputs.text


def test_train_tiny_end_to_end_beats_chance(feature_cache, tmp_path):
    """Features (EfficientNet grid + MiniLM states) for 360 synthetic images, then two epochs of
    the framework's own loop (94 batches of 16 = 24k pairs each) with a dev evaluation per epoch."""
    best = train(TrainConfig(model="mmca", preset="tiny", data=DATA, out=str(tmp_path / "run"),
                             cache=str(feature_cache), overrides={"epochs": 2}, progress=False))
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["train_loss"]) for r in rows)
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    # Chance rsum on 60 images / 300 captions is ~2 * (1.7 + 8 + 16) ~ 51; this run reaches ~340-370
    # (epoch 1: ~190-200).
    assert best["rsum"] > 250, best

    # Evaluation with another alpha (xmr eval --set alpha=...): the same weights, scored otherwise.
    run = tmp_path / "run"
    assert open_run(run).model.alpha == 0.2
    plain = open_run(run, overrides={"alpha": 0.0})
    img, txt = encode(plain.model, plain.data("test", cache=feature_cache, progress=False))
    with torch.no_grad():
        torch.testing.assert_close(plain.model.similarity(img, txt), img["i0"] @ txt["c0"].T, rtol=0, atol=0)
        assert (open_run(run).model.similarity(img, txt) - img["i0"] @ txt["c0"].T).abs().max() > 1e-3
    with pytest.raises(checkpoint.CheckpointError):
        open_run(run, overrides={"d": 32})  # a shape the weights do not have
    with pytest.raises(ConfigError, match="no argument"):
        open_run(run, overrides={"alpah": 0.5})
    out = tmp_path / "alpha.json"
    assert main(["eval", str(run), "--cache", str(feature_cache), "--two-step", "5", "--no-exhaustive",
                 "--set", "alpha=0.8", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["model_overrides"] == {"alpha": 0.8}
