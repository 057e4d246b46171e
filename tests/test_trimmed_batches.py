"""Training batches cut MiniLM states to the batch's longest caption (``PairData.pair_batch``): the
cut columns are padding in every row, so every model that reads the states scores and trains on
the cut batch exactly as on the full-width one."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from xmr.data.base import Split
from xmr.data.pairs import PairData
from xmr.data.text import Vocab
from xmr.interface import BERT_DIM, BERT_MAX_LEN, gather_rows
from xmr.models import create_model, get_preset

N, REGIONS, IMAGE_DIM = 8, 4, 12


def bert_pair_data(n_images: int = 6, per_image: int = 5, longest: int = 9) -> PairData:
    rng = np.random.default_rng(0)
    captions = [f"image {i} caption {j}" for i in range(n_images) for j in range(per_image)]
    split = Split("x", [str(i) for i in range(n_images)], captions, per_image,
                  features=rng.normal(size=(n_images, REGIONS, IMAGE_DIM)).astype(np.float32))
    lengths = rng.integers(2, longest + 1, len(captions))
    mask = np.arange(BERT_MAX_LEN)[None] < lengths[:, None]
    states = (rng.normal(size=(len(captions), BERT_MAX_LEN, BERT_DIM)) * mask[..., None]).astype(np.float16)
    return PairData(split, Vocab.build(captions), text_features={"bert": states, "bert_mask": mask})


def test_training_batches_cut_the_states_to_their_longest_caption_and_eval_batches_do_not():
    data = bert_pair_data()
    masks = data.text_features["bert_mask"]
    for caps in data.caption_batches(10, np.random.default_rng(3)):
        batch = data.pair_batch(caps)
        width = int(masks[caps].sum(1).max())
        assert batch["bert"].shape == (10, width, BERT_DIM) and batch["bert_mask"].shape == (10, width)
        np.testing.assert_array_equal(batch["bert"].numpy(), data.text_features["bert"][caps, :width])
        np.testing.assert_array_equal(batch["bert_mask"].numpy(), masks[caps, :width])
        assert batch["bert_mask"][:, -1].any()  # the longest caption fills the last column
    full = data.text_batch(np.arange(7))
    assert full["bert"].shape[1] == BERT_MAX_LEN and full["bert_mask"].shape[1] == BERT_MAX_LEN


def models() -> dict:
    bert = dict(text_input="bert")
    return {
        "vsepp": dict(vocab_size=20, image_dim=IMAGE_DIM, **get_preset("vsepp", "tiny").model, **bert),
        "mmca": dict(image_dim=IMAGE_DIM, **get_preset("mmca", "tiny").model),
        "mmca-shortlist": dict(image_dim=IMAGE_DIM, **get_preset("mmca", "tiny").model, train_negatives=2),
        "jgcar": dict(vocab_size=20, image_dim=IMAGE_DIM, n_regions=REGIONS, max_len=7,
                      **get_preset("jgcar", "tiny").model, **bert),
        "acmm": dict(vocab_size=20, image_dim=IMAGE_DIM, max_len=7, **get_preset("acmm", "tiny").model, **bert),
    }


@pytest.mark.parametrize("name", sorted(models()))
def test_a_cut_batch_gives_the_loss_and_gradients_of_the_full_width_one(name):
    kw = models()[name]
    torch.manual_seed(0)
    model = create_model(name.split("-")[0], **kw)
    if model.inputs.image == "pooled":
        data = bert_pair_data()
        data.features = data.features.mean(1)
    else:
        data = bert_pair_data()
    caps = next(data.caption_batches(N, np.random.default_rng(1)))
    cut = data.pair_batch(caps)
    full = {**cut, **{k: torch.from_numpy(np.asarray(data.text_features[k][caps])) for k in ("bert", "bert_mask")}}
    assert cut["bert"].shape[1] < full["bert"].shape[1] == BERT_MAX_LEN
    results = []
    for batch in (full, cut):
        m = copy.deepcopy(model)  # ACMM's loss writes its memory: each batch starts from the same one
        m.train()
        parts = m.loss(m.encode_images(batch), m.encode_texts(batch), batch)
        parts["loss"].backward()
        results.append((parts["loss"].detach(), {k: p.grad for k, p in m.named_parameters() if p.grad is not None}))
    (loss_full, grad_full), (loss_cut, grad_cut) = results
    torch.testing.assert_close(loss_cut, loss_full, rtol=1e-5, atol=1e-6)
    assert grad_cut.keys() == grad_full.keys() and grad_full
    for key in grad_full:
        torch.testing.assert_close(grad_cut[key], grad_full[key], rtol=1e-4, atol=1e-6, msg=key)


def test_gather_rows_equals_indexing_with_its_gradients():
    x = torch.randn(5, 3, 2, requires_grad=True)
    y = torch.randn(5, 4, requires_grad=True)
    idx = torch.tensor([4, 0, 0, 2, 4, 4])
    got = gather_rows({"x": x, "y": y}, idx)
    (got["x"].sum() * 2 + (got["y"] ** 2).sum()).backward()
    gx, gy = x.grad.clone(), y.grad.clone()
    x.grad = y.grad = None
    (x[idx].sum() * 2 + (y[idx] ** 2).sum()).backward()
    torch.testing.assert_close(got["x"], x[idx])
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gy, y.grad)
