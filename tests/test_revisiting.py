"""Revisiting (one CNN for images and encoded sentences, center loss, Euclidean retrieval)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xmr.data.text import Vocab
from xmr.data.text_image import BlockEncoder
from xmr.models.revisiting import Revisiting, SentenceRenderer, config2_crop, text_layout

CAPTIONS = ["a red circle on the left", "two dogs run in the snow", "a man rides a big red horse",
            "the dogs and the man"]
SMALL = "synthetic,seed=5,n_train=24,n_dev=10,n_test=10"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small convolutions on a busy 2-core machine: one thread avoids OpenMP contention stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vocab():
    return Vocab.build(CAPTIONS)


@pytest.fixture(scope="module")
def table(vocab):
    return np.random.default_rng(1).uniform(-0.2, 0.2, (len(vocab), 50)).astype(np.float32)


def make_model(vocab, table, **kw):
    args = dict(n_train_images=4, resolution=32, embed_dim=16, freeze_blocks=8, word_init=table, trace_frozen=False)
    return Revisiting(len(vocab), **{**args, **kw})


def batch_of(vocab, rows, resolution=32, seed=0):
    toks, lens = vocab.encode_batch([CAPTIONS[i] for i in rows])
    gen = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (len(rows), resolution, resolution, 3), dtype=torch.uint8, generator=gen),
            "tokens": torch.from_numpy(toks), "lengths": torch.from_numpy(lens),
            "image_index": torch.as_tensor(rows)}


@pytest.mark.parametrize("resolution", [32, 96, 256])
def test_renderer_equals_block_encoder(vocab, table, resolution):
    renderer = SentenceRenderer(len(vocab), 50, resolution, table)
    encoder = BlockEncoder((vocab, table), canvas=resolution, clip=0.3, **text_layout(resolution))
    assert renderer.capacity == encoder.capacity
    sentences = [*CAPTIONS, "zebra a red unknownword circle",  # unknown words are skipped
                 "circle red a", " ".join(["dogs", "red"] * 40)]  # reversed order; past the capacity
    toks, lens = vocab.encode_batch(sentences, max_len=200)
    out = renderer(torch.from_numpy(toks), torch.from_numpy(lens)).numpy()
    assert out.dtype == np.uint8 and out.shape == (len(sentences), resolution, resolution, 3)
    for img, sentence in zip(out, sentences):
        np.testing.assert_array_equal(img, encoder.encode(sentence))
    # word order matters, and rendering is deterministic
    assert not np.array_equal(out[0], renderer(torch.from_numpy(toks[5:6]), torch.from_numpy(lens[5:6]))[0].numpy())
    np.testing.assert_array_equal(out, renderer(torch.from_numpy(toks), torch.from_numpy(lens)).numpy())


def test_layout_keeps_words_inside_config2_crops():
    for r in (32, 96, 128, 256):
        lay, crop = text_layout(r), config2_crop(r)
        assert lay["margin"] == r - crop
        enc = BlockEncoder((["w"], np.zeros((1, 50), np.float32)), canvas=r, clip=0.3, **lay)
        y, x = enc.position(enc.capacity - 1)
        assert y + enc.block_px <= crop and x + enc.block_px <= crop  # inside every crop
    assert text_layout(256) == {"cell": 4, "gap": 4, "margin": 29}  # BlockEncoder's defaults


@pytest.mark.parametrize("resolution, grid", [(96, 4), (128, 4), (128, 5), (256, 4), (64, 3)])
def test_grid_layout_fills_the_crop_window_with_the_largest_words(resolution, grid):
    lay, crop = text_layout(resolution, grid), config2_crop(resolution)
    enc = BlockEncoder((["w"], np.zeros((1, 50), np.float32)), canvas=resolution, clip=0.3, **lay)
    assert enc.capacity >= grid * grid and lay["gap"] == lay["cell"]  # n words per row (or more)
    y, x = enc.position(enc.capacity - 1)
    assert y + enc.block_px <= crop and x + enc.block_px <= crop  # the last word inside every crop
    bigger = {**lay, "cell": lay["cell"] + 1, "gap": lay["cell"] + 1}
    try:
        assert BlockEncoder((["w"], np.zeros((1, 50), np.float32)), canvas=resolution, clip=0.3,
                            **bigger).rows < grid  # one more pixel per cell no longer fits n per row
    except ValueError:
        pass  # not even one word fits
    assert lay["cell"] >= text_layout(resolution)["cell"]  # never smaller than the scaled layout
    with pytest.raises(ValueError, match="does not fit"):
        text_layout(32, 5)


def test_renderer_with_grid_layout_equals_block_encoder(vocab, table):
    renderer = SentenceRenderer(len(vocab), 50, 96, table, grid=4)
    encoder = BlockEncoder((vocab, table), canvas=96, clip=0.3, **text_layout(96, 4))
    assert renderer.capacity == 16 and renderer.encoder.cell == 3
    sentences = [*CAPTIONS, " ".join(["dogs", "red"] * 12)]  # the last one past the capacity
    toks, lens = vocab.encode_batch(sentences, max_len=60)
    out = renderer(torch.from_numpy(toks), torch.from_numpy(lens)).numpy()
    for img, sentence in zip(out, sentences):
        np.testing.assert_array_equal(img, encoder.encode(sentence))


def test_one_network_for_both_modalities(vocab, table):
    model = make_model(vocab, table, trace_frozen=True).eval()
    batch = batch_of(vocab, [0, 1, 2])
    before_i, before_t = model.encode_images(batch)["emb"], model.encode_texts(batch)["emb"]
    for weight in (model.trunk.net._conv_head.weight,  # trained part
                   model.trunk.net._blocks[0]._depthwise_conv.weight):  # frozen (traced) part
        with torch.no_grad():
            weight.mul_(1.5)
        after_i, after_t = model.encode_images(batch)["emb"], model.encode_texts(batch)["emb"]
        assert not torch.allclose(before_i, after_i) and not torch.allclose(before_t, after_t)
        before_i, before_t = after_i, after_t
    # the frozen prefix gets no gradient and keeps its batch-norm statistics in training mode
    model.train()
    assert not any(p.requires_grad for p in model.trunk.prefix.parameters())
    assert not model.trunk.net._bn0.training and model.trunk.net._bn1.training
    # image and text go through the same parameters: one forward, one set of weights
    names = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"trunk", "fc", "classifier"}


def test_similarity_is_negative_squared_euclidean(vocab, table):
    model = make_model(vocab, table)
    img, txt = {"emb": torch.randn(5, 16)}, {"emb": torch.randn(7, 16)}
    s = model.similarity(img, txt)
    torch.testing.assert_close(s, -torch.cdist(img["emb"], txt["emb"]).pow(2), atol=1e-4, rtol=1e-4)
    txt5 = {"emb": txt["emb"][:5]}
    torch.testing.assert_close(model.pair_similarity(img, txt5), model.similarity(img, txt5).diagonal(),
                               atol=1e-4, rtol=1e-4)
    assert model.metric == "l2" and model.embed(img) is img["emb"]


def test_loss_decreases_and_centers_move(vocab, table):
    torch.manual_seed(0)
    model = make_model(vocab, table, center_weight=0.1).train()
    batch = batch_of(vocab, [0, 1, 2, 3])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(5):
        img, txt = model(batch)
        y = torch.cat([img["label"], txt["label"]])
        assert y.tolist() == [0, 1, 2, 3] * 2
        x = torch.cat([img["emb"], txt["emb"]]).detach()
        old = model.center.centers.clone()
        parts = model.loss(img, txt, batch)
        means = torch.stack([x[y == c].mean(0) for c in range(4)])
        assert ((model.center.centers - means).norm(dim=1) < (old - means).norm(dim=1)).all()
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        losses.append(parts["loss"].item())
    assert losses[-1] < losses[0]
    model.eval()  # no centre update outside training
    frozen = model.center.centers.clone()
    model.loss(*model(batch), batch)
    torch.testing.assert_close(model.center.centers, frozen)


def test_config2_doubles_rows_in_training_only(vocab, table):
    model = make_model(vocab, table, config="2")
    batch = batch_of(vocab, [0, 1, 2])
    model.train()
    views, classes = model.image_views(batch)
    assert views.shape[0] == 6 and classes.tolist() == [0, 1, 2, 0, 1, 2]
    torch.testing.assert_close(views[3:], batch["image"].flip(2))
    texts, classes = model.text_views(batch)
    assert texts.shape == (6, 32, 32, 3) and texts.dtype == torch.uint8
    torch.testing.assert_close(texts[:3], model.render_texts(batch))
    img, txt = model(batch)
    assert img["emb"].shape == txt["emb"].shape == (6, 16)
    assert img["label"].tolist() == txt["label"].tolist() == [0, 1, 2, 0, 1, 2]
    assert torch.isfinite(model.loss(img, txt, batch)["loss"])
    model.eval()
    assert model.encode_images(batch)["emb"].shape == model.encode_texts(batch)["emb"].shape == (3, 16)
    assert "label" not in model.encode_images(batch)


@pytest.mark.parametrize("resolution", [32, 96])
def test_config2_text_crops_keep_the_cells(vocab, table, resolution):
    """A crop is the caption picture shifted by its offset, its pixels unchanged (no resize), black
    elsewhere, and every word is still whole."""
    model = make_model(vocab, table, config="2", resolution=resolution)
    batch = batch_of(vocab, [0, 1, 2, 3], resolution=resolution)
    full = model.render_texts(batch)
    torch.manual_seed(3)
    crops = model.crop_pad(full)
    crop = config2_crop(resolution)
    assert crops.shape == full.shape and not crops[:, crop:].any() and not crops[:, :, crop:].any()
    shifted = 0
    for f, c in zip(full.numpy(), crops.numpy()):
        matches = [(y, x) for y in range(resolution - crop + 1) for x in range(resolution - crop + 1)
                   if np.array_equal(c[:crop, :crop], f[y: y + crop, x: x + crop])]
        assert matches  # the crop is a window of the picture, pixel for pixel
        assert c.astype(bool).sum() == f.astype(bool).sum()  # no word cut or lost
        shifted += matches[0] != (0, 0)
    assert shifted  # the offsets are random


def test_whole_image_batches_encode_each_image_once(vocab, table):
    model = make_model(vocab, table, batch_by="image").train()
    batch = batch_of(vocab, [2, 0, 2, 1, 0, 2])  # caption rows: image 2 three times, 0 twice
    batch["image"][[2, 5]] = batch["image"][0].clone()
    batch["image"][4] = batch["image"][1].clone()
    img, txt = model(batch)
    assert img["label"].tolist() == [0, 1, 2] and txt["label"].tolist() == [2, 0, 2, 1, 0, 2]
    views, _ = model.image_views(batch)
    torch.testing.assert_close(views, batch["image"][[1, 3, 0]])
    assert img["emb"].shape == (3, 16) and txt["emb"].shape == (6, 16)
    assert torch.isfinite(model.loss(img, txt, batch)["loss"])


def test_normalised_embeddings_and_cosine_classifier(vocab, table):
    model = make_model(vocab, table, normalize=True, logit_scale=10.0).train()
    batch = batch_of(vocab, [0, 1, 2, 3])
    img, txt = model(batch)
    for reps in (img, txt):
        torch.testing.assert_close(reps["emb"].norm(dim=1), torch.ones(4))
    logits = model.logits(img["emb"])
    assert logits.abs().max() <= 10.0 + 1e-4  # scale x cosine
    w = torch.nn.functional.normalize(model.classifier.weight, dim=1)
    torch.testing.assert_close(logits, 10.0 * img["emb"] @ w.T)
    # Euclidean ranking of unit vectors is cosine ranking
    s = model.similarity(img, txt)
    torch.testing.assert_close(s, 2 * img["emb"] @ txt["emb"].T - 2, atol=1e-5, rtol=1e-5)


def test_pixel_cache(make_flickr8k, tmp_path, monkeypatch):
    from xmr.data import DatasetSpec
    from xmr.data.images import load_rgb
    from xmr.features import pixels
    from xmr.features.store import split_with_features

    root = make_flickr8k()
    spec = f"flickr8k:{root}"
    s = split_with_features(spec, "train", "pixels", cache=tmp_path, progress=False, resolution=32)
    assert s.features.dtype == np.uint8 and s.features.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(s.features[1], pixels.resized_pixels(load_rgb(s.image_paths[1]), 32))
    path = pixels.pixel_root(DatasetSpec.parse(spec).key, 32, tmp_path) / "train.npy"
    assert path.is_file() and not list(path.parent.glob("*.partial"))

    def fail(*a, **k):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(pixels, "resized_pixels", fail)
    again = split_with_features(spec, "train", "pixels", cache=tmp_path, progress=False, resolution=32)
    np.testing.assert_array_equal(again.features, s.features)


def test_train_and_evaluate_end_to_end(tmp_path, feature_cache):
    from xmr.eval.evaluate import evaluate
    from xmr.runs import open_run
    from xmr.train import TrainConfig, train

    out = tmp_path / "run"
    best = train(TrainConfig(model="revisiting", preset="tiny", data=SMALL, out=str(out), cache=str(feature_cache),
                             overrides={"epochs": 1, "batch_size": 20}, progress=False))
    assert "i2t" in best
    trained = open_run(out)
    model, meta = trained.model, trained.meta
    assert meta["image_input"] == "pixels" and meta["model_kwargs"]["n_train_images"] == 24
    assert model.inputs.pixels == 32
    test = trained.data("test", cache=feature_cache, progress=False)
    assert test.image_batch(np.arange(2))["image"].dtype == torch.uint8
    result = evaluate(model, test)
    assert 0 <= result["i2t"]["r1"] <= 100 and np.isfinite(result["rsum"])


def test_centre_classifier_and_centre_update_order(vocab, table):
    with pytest.raises(ValueError, match="normalize"):
        make_model(vocab, table, classifier="centres")
    batch = batch_of(vocab, [0, 1, 2, 3])
    for order in ("after", "before"):
        torch.manual_seed(0)
        model = make_model(vocab, table, normalize=True, classifier="centres", center_update=order,
                           logit_scale=5.0).train()
        assert model.classifier is None
        model.center.centers[2:] = torch.randn(2, 16)  # classes 0 and 1 never seen: zero centres
        img, txt = model(batch)
        x, y = torch.cat([img["emb"], txt["emb"]]), torch.cat([img["label"], txt["label"]])
        old = model.center.centers.clone()
        logits = model.logits(x)
        assert (logits[:, :2] == 0).all()  # an unseen class scores 0
        torch.testing.assert_close(logits[:, 2:], 5.0 * x @ torch.nn.functional.normalize(old[2:], dim=1).T)
        parts = model.loss(img, txt, batch)
        new = model.center.centers
        assert not torch.allclose(new, old)  # the centres moved once either way
        used = old if order == "after" else new  # the centres the center loss measured against
        expected = 0.5 * (x.detach() - used[y]).pow(2).sum(1).mean()
        torch.testing.assert_close(parts["center"], expected)
        assert torch.isfinite(parts["softmax_image"]) and torch.isfinite(parts["softmax_text"])


def test_photos_at_their_own_resolution(vocab, table):
    model = make_model(vocab, table, image_resolution=64).train()
    assert model.inputs.pixels == 64 and model.resolution == 32
    batch = batch_of(vocab, [0, 1, 2], resolution=64)
    assert model.render_texts(batch).shape == (3, 32, 32, 3)
    img, txt = model(batch)
    assert img["emb"].shape == txt["emb"].shape == (3, 16)
    # two trunk passes: every batch norm keeps its ImageNet statistics, also in training
    bns = [m for m in model.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = [m.running_mean.clone() for m in bns]
    model.loss(img, txt, batch)["loss"].backward()
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))
    model.eval()
    assert model.encode_images(batch)["emb"].shape == (3, 16)
    with pytest.raises(ValueError, match="64, 64, 3"):
        model.encode_images(batch_of(vocab, [0], resolution=32))
    assert make_model(vocab, table).trunk.frozen_statistics is False  # one size: batch statistics train
