"""ACMM (Huang & Wang, ICCV 2019): content addressing and the memory update, persistence of the
memory across training steps and its freezing in evaluation, padding, the batched B x B score
against a per-pair loop written from the paper's equations, the Table 1 ablations, the fast
update against the strictly sequential one, the ACMM* ensemble and checkpoints."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xmr import checkpoint
from xmr.models import create_model, get_preset
from xmr.interface import BERT_DIM, BERT_MAX_LEN
from xmr.losses import triplet_ranking_loss
from xmr.models.acmm import ACMM, Heads, address, ensemble_similarity, fast_update, oneplus, write

VOCAB, IMAGE_DIM, REGIONS, MAX_LEN = 40, 20, 6, 10


def strict_sequential_update(memory: torch.Tensor, region: Heads, word: Heads, topk: int = 0) -> torch.Tensor:
    """The reference ``fast_update`` is checked against: every write in turn, straight from the
    Sec. 3.3 equations. Pair by pair, position by position, the region write then the word write,
    each addressed against the memory the previous write left: ``M_i <- M_i o (1 - w_i e) + w_i u``."""
    banks = list(memory.unbind(0))
    for p in range(region.mask.size(0)):
        for t in range(max(region.mask.size(1), word.mask.size(1))):
            for heads, b in ((region, 0), (word, len(banks) - 1)):
                if t < heads.mask.size(1) and bool(heads.mask[p, t]):
                    w = address(heads.key[p, t], banks[b], heads.strength[p, t], topk)  # (N,)
                    if heads.gate is not None:
                        w = w * heads.gate[p, t]
                    banks[b] = banks[b] * (1 - w[:, None] * heads.erase[p, t]) + w[:, None] * heads.add[p, t]
    return torch.stack(banks)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second thread only adds synchronisation (and contention with
    anything else on the machine). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model(seed: int = 0, **kw) -> ACMM:
    torch.manual_seed(seed)
    args = dict(vocab_size=VOCAB, image_dim=IMAGE_DIM, max_len=MAX_LEN, word_dim=16, hidden=24,
                mem_items=8, mem_width=12)
    return create_model("acmm", **{**args, **kw})


def batch(n: int, lengths: list[int], seed: int = 1, width: int | None = None) -> dict:
    """n images with REGIONS regions, len(lengths) sentences; padding ids are 0."""
    g = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    tokens = torch.randint(1, VOCAB, (len(lengths), width), generator=g)
    lengths_t = torch.tensor(lengths)
    tokens[torch.arange(width)[None] >= lengths_t[:, None]] = 0
    return {"image": torch.randn(n, REGIONS, IMAGE_DIM, generator=g), "tokens": tokens, "lengths": lengths_t}


def encode(model: ACMM, b: dict):
    return model.encode_images(b), model.encode_texts(b)


def random_heads(p: int, t: int, n_mem: int, width: int, scale: float = 1.0, seed: int = 0,
                 mask: torch.Tensor | None = None) -> Heads:
    g = torch.Generator().manual_seed(seed)
    return Heads(key=torch.randn(p, t, width, generator=g),
                 strength=oneplus(2 * torch.randn(p, t, generator=g)),
                 erase=scale * torch.rand(p, t, width, generator=g),
                 add=scale * torch.randn(p, t, width, generator=g),
                 mask=torch.ones(p, t, dtype=torch.bool) if mask is None else mask)


# --------------------------------------------------------------------------- addressing and update


def test_addressing_sums_to_one_and_sharpens_on_the_most_similar_item():
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(7, 5, generator=g)
    keys = torch.randn(4, 5, generator=g)
    cos = F.normalize(keys, dim=-1) @ F.normalize(memory, dim=-1).T
    best = cos.argmax(-1)
    previous = torch.zeros(4)
    for strength in (1.0, 3.0, 10.0, 30.0, 300.0, 3000.0):
        w = address(keys, memory, torch.full((4,), strength))
        assert w.shape == (4, 7) and (w >= 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(4), rtol=0, atol=1e-6)
        assert torch.equal(w.argmax(-1), best)  # softmax of beta cos: the order is cos's
        on_best = w.gather(1, best[:, None]).squeeze(1)
        # More strength, more weight on the most similar item (strictly, until it saturates at 1).
        assert ((on_best > previous) | (on_best == 1)).all()
        previous = on_best
    assert (previous > 0.999).all()
    # Scaling a key or an item does not move the weights: the similarity is a cosine.
    torch.testing.assert_close(address(3 * keys, memory * (torch.rand(7, 1, generator=g) + 0.1), torch.full((4,), 5.0)),
                               address(keys, memory, torch.full((4,), 5.0)), rtol=0, atol=1e-6)


def test_full_erase_clears_an_item_and_leaves_exactly_the_write_vector():
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(5, 4, generator=g)
    one_hot = torch.zeros(1, 5)
    one_hot[0, 2] = 1.0
    ones, u = torch.ones(1, 4), torch.randn(1, 4, generator=g)
    cleared = write(memory, one_hot, ones, torch.zeros(1, 4))
    assert torch.equal(cleared[2], torch.zeros(4))
    assert torch.equal(cleared[[0, 1, 3, 4]], memory[[0, 1, 3, 4]])
    assert torch.equal(write(memory, one_hot, ones, u)[2], u[0])
    # Through addressing: a key pointing at item 2 with a large strength gives it weight 1.
    heads = Heads(key=memory[2].view(1, 1, 4) * 2, strength=torch.full((1, 1), 1e4), erase=ones.view(1, 1, 4),
                  add=u.view(1, 1, 4), mask=torch.ones(1, 1, dtype=torch.bool))
    none = Heads(heads.key[:, :0], heads.strength[:, :0], heads.erase[:, :0], heads.add[:, :0], heads.mask[:, :0])
    for update in (fast_update, strict_sequential_update):
        after = update(memory[None], heads, none)[0]
        torch.testing.assert_close(after[2], u[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(after[[0, 1, 3, 4]], memory[[0, 1, 3, 4]], rtol=0, atol=1e-6)


def test_sparse_addressing_keeps_the_top_k_items_and_renormalises():
    g = torch.Generator().manual_seed(1)
    memory, keys, strength = torch.randn(9, 6, generator=g), torch.randn(5, 6, generator=g), torch.full((5,), 4.0)
    dense = address(keys, memory, strength)
    for k in (1, 3):
        sparse = address(keys, memory, strength, topk=k)
        top = dense.topk(k, dim=-1).indices
        assert ((sparse > 0).sum(-1) == k).all()
        assert torch.equal(sparse.topk(k, dim=-1).indices.sort(-1).values, top.sort(-1).values)
        kept = dense.gather(1, top)
        torch.testing.assert_close(sparse.gather(1, top), kept / kept.sum(-1, keepdim=True))
    assert torch.equal(address(keys, memory, strength, topk=9), dense)  # k >= N: dense


def _mean_pairwise_cosine(items: torch.Tensor) -> float:
    c = F.normalize(items, dim=-1) @ F.normalize(items, dim=-1).T
    n = len(c)
    return float((c.sum() - n) / (n * n - n))


def test_dense_writes_collapse_the_items_and_top1_writes_keep_them_apart():
    """Why the small presets write sparsely: B x J x 2 dense writes per batch spread over every
    item erase them all and leave each the same weighted mean of the batch's write vectors, even
    when each write vector follows its key (as learned heads' do); content addressing can then never
    tell the items apart again. Top-1 writes change only the addressed item (module docstring)."""
    g = torch.Generator().manual_seed(0)
    pairs, steps, n_mem, width = 32, 10, 16, 32

    def batch_heads():
        key = torch.randn(pairs, steps, width, generator=g)
        add = torch.randn(width, generator=g) + key + 0.5 * torch.randn(pairs, steps, width, generator=g)
        return Heads(key, torch.full((pairs, steps), 2.0), torch.full((pairs, steps, width), 0.5), add,
                     torch.ones(pairs, steps, dtype=torch.bool))

    start = torch.randn(1, n_mem, width, generator=g) / width ** 0.5
    assert _mean_pairwise_cosine(start[0]) < 0.2
    final = {}
    for topk in (0, 1, 2):
        memory = start
        for _ in range(20):
            memory = fast_update(memory, batch_heads(), batch_heads(), topk)
        final[topk] = _mean_pairwise_cosine(memory[0])
    assert final[0] > 0.99, final
    assert final[1] < 0.65 and final[2] < 0.75, final


def test_unit_items_stay_unit_and_the_read_strength_bias_sharpens_reads():
    plain = small_model(write_topk=1).train()
    unit = small_model(write_topk=1, unit_items=True, read_strength_bias=20.0).train()
    torch.testing.assert_close(unit.memory.norm(dim=-1), torch.ones(1, 8))
    b = batch(4, [3, 5, 2, 4], seed=1)
    for model in (plain, unit):
        for _ in range(3):
            model.loss(*encode(model, b), b)["loss"].backward()
    torch.testing.assert_close(unit.memory.norm(dim=-1), torch.ones(1, 8))
    assert (plain.memory.norm(dim=-1) - 1).abs().max() > 0.05  # the paper's update does not keep it

    def read_entropy(model: ACMM) -> float:
        reads = model.read_weights(*encode(model, b))
        w = reads["region"][reads["region_mask"]]
        torch.testing.assert_close(w.sum(-1), torch.ones(len(w)))
        return float(-(w * w.clamp(min=1e-12).log()).sum(-1).mean())

    uniform = math.log(8)  # the entropy of equal weights on the 8 items
    with torch.no_grad():  # beta^r ~ 21 instead of ~1.7: reads far from the uniform mean of the items
        assert read_entropy(plain) > 0.95 * uniform
        assert read_entropy(unit) < 0.7 * uniform
        assert (unit.read_weights(*encode(unit, b))["word_strength"] > 15).all()


def test_fast_update_is_exact_for_one_pair_and_second_order_otherwise():
    n_mem, width, steps = 6, 5, 4
    memory = torch.randn(1, n_mem, width, generator=torch.Generator().manual_seed(3))
    # One pair (a word at every position, the last one padding): every step holds one write.
    mask = torch.tensor([[True, True, True, False]])
    region = random_heads(1, steps, n_mem, width, seed=1, mask=mask)
    word = random_heads(1, steps, n_mem, width, seed=2, mask=mask)
    torch.testing.assert_close(fast_update(memory, region, word), strict_sequential_update(memory, region, word),
                               rtol=0, atol=1e-6)
    # Two banks (w/o shared): region writes only reach bank 0, word writes only bank 1.
    two = torch.cat([memory, memory + 1])
    fast2 = fast_update(two, region, word)
    torch.testing.assert_close(fast2, strict_sequential_update(two, region, word), rtol=0, atol=1e-6)
    torch.testing.assert_close(fast2[0], fast_update(memory, region, random_heads(1, 0, n_mem, width))[0],
                               rtol=0, atol=1e-6)

    # Three pairs of different lengths: erase and write vectors scaled by eps; the update is O(eps)
    # and the difference from the strictly sequential one O(eps^2).
    mask = torch.tensor([[True, True, True, True], [True, True, False, False], [True, True, True, False]])
    gaps, sizes = [], []
    for eps in (0.1, 0.01):
        region = random_heads(3, steps, n_mem, width, eps, seed=4, mask=mask)
        word = random_heads(3, steps, n_mem, width, eps, seed=5, mask=mask)
        fast, strict = fast_update(memory, region, word), strict_sequential_update(memory, region, word)
        sizes.append(float((strict - memory).norm()))
        gaps.append(float((fast - strict).norm()))
    assert gaps[0] > 0  # not exact with several pairs
    assert 5 < sizes[0] / sizes[1] < 20  # first order: ~10x smaller
    assert gaps[0] / gaps[1] > 50  # second order: ~100x smaller
    assert gaps[1] < 0.01 * sizes[1]


# --------------------------------------------------------------------------- per-pair reference


def reference_read(model: ACMM, layer, x: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """r = sum_i w_i M_i, w = softmax_i(beta^r cos(k^r, M_i)) with {k^r, beta^r} = t(x) (Sec. 3.2-3.3)."""
    w = model.mem_width
    k_r, b_r = layer(x)[..., : w + 1].split([w, 1], dim=-1)
    cos = (k_r / k_r.norm(dim=-1, keepdim=True)) @ (bank / bank.norm(dim=-1, keepdim=True)).T
    return torch.softmax(oneplus(b_r) * cos, dim=-1) @ bank


@torch.no_grad()
def reference_scores(model: ACMM, b: dict, lam: float | None = None) -> torch.Tensor:
    """Eq. 1 for each pair on its own, straight from the paper: the sentence cut to its length,
    G = softmax over regions of (P s_j)^T (Q a_i), V = G A W, reads from t^V(v_j) and t^S(s_j)."""
    lam = model.lam if lam is None else lam
    lengths = b["lengths"].tolist()
    out = torch.empty(len(b["image"]), len(lengths))
    memory = model.memory if model.use_memory else None
    for i in range(len(b["image"])):
        a = model.encode_images({"image": b["image"][i: i + 1]})["regions"][0]  # (I, H)
        for k, n in enumerate(lengths):
            s = model.encode_texts({"tokens": b["tokens"][k: k + 1, :n], "lengths": torch.tensor([n])})["words"][0, :n]
            align = mem = None
            if model.use_alignment:
                g = torch.softmax(model.align_p(s) @ model.align_q(a).T, dim=1)  # (J, I)
                v = g @ model.align_w(a)
                align = F.cosine_similarity(v, s, dim=-1).mean()
            if memory is not None:
                x_v = v if model.use_alignment else a
                r_v = reference_read(model, model.iface_v, x_v, memory[0])
                r_s = reference_read(model, model.iface_s, s, memory[-1])
                if model.read_out is not None:  # the reads enhance v_j (a_i) and s_j
                    r_v, r_s = x_v + model.read_out(r_v), s + model.read_out(r_s)
                if model.use_alignment:
                    mem = F.cosine_similarity(r_v, r_s, dim=-1).mean()
                else:
                    mem = F.cosine_similarity(r_v.mean(0), r_s.mean(0), dim=0)
            out[i, k] = align if mem is None else mem if align is None else mem + lam * align
    return out


ABLATIONS = {  # Table 1 rows
    "align (w/o relation)": dict(use_memory=False, relation=False),
    "align": dict(use_memory=False),
    "mem (w/o shared)": dict(use_alignment=False, shared_memory=False),
    "mem": dict(use_alignment=False),
    "align + mem (w/o shared)": dict(shared_memory=False),
    "align + mem": dict(),
    "align + mem (w/o relation)": dict(relation=False),
    "align + mem, enhanced reads": dict(enhanced_reads=True),
    "align + mem (w/o shared), enhanced reads": dict(enhanced_reads=True, shared_memory=False),
    "mem, enhanced reads": dict(use_alignment=False, enhanced_reads=True),
    "align + mem, gate + split writes": dict(enhanced_reads=True, write_gate=-1.0, write_split=True, write_topk=2),
}


@pytest.mark.parametrize("row", list(ABLATIONS))
def test_batched_similarity_matches_per_pair_reference(row):
    model = small_model(**ABLATIONS[row]).eval()
    b = batch(4, [3, 8, 1, 5, 6], seed=5)
    expected = reference_scores(model, b)
    img, txt = encode(model, b)
    results = []
    with torch.no_grad():
        for chunk in (1, 7, 4096):
            model.cell_chunk = chunk
            results.append(model.similarity(img, txt))
        diag = model.pair_similarity({k: v[[0, 1, 2, 3]] for k, v in img.items()},
                                     {k: v[[0, 1, 2, 3]] for k, v in txt.items()})
        part = model.similarity({k: v[1:3] for k, v in img.items()}, {k: v[2:5] for k, v in txt.items()})
    for r in results:
        torch.testing.assert_close(r, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(diag, results[-1].diagonal()[:4], rtol=0, atol=1e-6)
    torch.testing.assert_close(part, results[-1][1:3, 2:5], rtol=0, atol=1e-6)
    assert results[-1].std() > 1e-4  # not a constant


@pytest.mark.parametrize("row", list(ABLATIONS))
def test_every_ablation_trains(row):
    model = small_model(**ABLATIONS[row]).train()
    b = batch(5, [4, 7, 2, 5, 3], seed=2)
    b["same_image"] = torch.zeros(5, 5, dtype=torch.bool)
    out = model.loss(*encode(model, b), b)
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    if model.use_memory:
        assert out["memory_change"] > 0
    else:
        assert not hasattr(model, "memory")


def test_no_alignment_and_no_memory_is_refused():
    with pytest.raises(ValueError, match="both are off"):
        small_model(use_alignment=False, use_memory=False)


# --------------------------------------------------------------------------- memory state


def test_memory_persists_across_steps_and_is_frozen_in_evaluation():
    model = small_model().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    b1, b2 = batch(4, [3, 5, 2, 4], seed=1), batch(4, [6, 2, 4, 3], seed=2)
    m0 = model.memory.clone()
    model.loss(*encode(model, b1), b1)["loss"].backward()
    opt.step()
    m1 = model.memory.clone()
    assert (m1 - m0).abs().max() > 1e-3  # step 1 wrote
    assert not m1.requires_grad  # stored detached

    # Step 2 starts from step 1's state (not a wiped or re-initialised memory).
    opt.zero_grad()
    img, txt = encode(model, b2)
    with torch.no_grad():
        expected = fast_update(m1, *model.write_heads(img, txt))
    model.loss(img, txt, b2)["loss"].backward()
    torch.testing.assert_close(model.memory, expected, rtol=0, atol=1e-6)
    m2 = model.memory.clone()

    # Evaluation reads it frozen: eval mode, no_grad in training mode, similarity, a loss without grad.
    model.eval()
    s_eval = model.similarity(*encode(model, b1))
    model.loss(*encode(model, b1), b1)
    model.train()
    with torch.no_grad():
        s_nograd = model.similarity(*encode(model, b1))
        model.loss(*encode(model, b1), b1)
    model.similarity(*encode(model, b1))
    model.write_weights(*encode(model, b1))
    assert torch.equal(model.memory, m2)
    torch.testing.assert_close(s_eval, s_nograd, rtol=0, atol=1e-6)


def test_write_heads_get_gradients_only_when_reading_after_the_write():
    w = 12
    for read_after_write in (True, False):
        model = small_model(read_after_write=read_after_write).train()
        b = batch(4, [3, 5, 2, 4], seed=1)
        model.loss(*encode(model, b), b)["loss"].backward()
        for layer in (model.iface_v, model.iface_s):
            read_rows, write_rows = layer.weight.grad[: w + 1], layer.weight.grad[w + 1:]
            assert read_rows.abs().sum() > 0
            assert (write_rows.abs().sum() > 0) == read_after_write


def test_padding_is_masked_out():
    model = small_model().eval()
    b = batch(4, [4, 7, 2, 5], seed=3)
    with torch.no_grad():
        s = model.similarity(*encode(model, b))
        heads = model.write_heads(*encode(model, b))
        # Junk ids at the padding positions, and two more padding columns.
        junk = dict(b, tokens=b["tokens"].clone())
        pad = torch.arange(7)[None] >= b["lengths"][:, None]
        junk["tokens"][pad] = torch.randint(1, VOCAB, (int(pad.sum()),))
        wider = dict(b, tokens=F.pad(b["tokens"], (0, 2)))
        for other in (junk, wider):
            torch.testing.assert_close(model.similarity(*encode(model, other)), s, rtol=0, atol=1e-6)
            img, txt = encode(model, other)
            torch.testing.assert_close(model.pair_similarity(img, txt), s.diagonal(), rtol=0, atol=1e-6)
            new = model.write_heads(img, txt)
            torch.testing.assert_close(fast_update(model.memory, *new), fast_update(model.memory, *heads),
                                       rtol=0, atol=1e-6)
    # Texts are padded to max_len so that encoded batches of different widths concatenate.
    assert model.encode_texts(b)["words"].shape[1] == MAX_LEN


def test_write_weights_for_figure_3():
    model = small_model().eval()
    b = batch(3, [4, 7, 2], seed=4)
    with torch.no_grad():
        ww = model.write_weights(*encode(model, b))
    assert ww["region"].shape == ww["word"].shape == (3, 7, 8)
    assert torch.equal(ww["region_mask"], ww["word_mask"])
    torch.testing.assert_close(ww["region"].sum(-1), torch.ones(3, 7), rtol=0, atol=1e-6)
    unaligned = small_model(use_alignment=False).eval()
    with torch.no_grad():
        ww = unaligned.write_weights(*encode(unaligned, b))
    assert ww["region"].shape == (3, REGIONS, 8) and ww["word"].shape == (3, 7, 8)


# --------------------------------------------------------------------------- ensemble, embed, checkpoint


def test_ensemble_is_the_mean_of_the_two_lambdas():
    model = small_model().eval()
    b = batch(3, [4, 6, 2, 5], seed=6)
    with torch.no_grad():
        img, txt = encode(model, b)
        mats = []
        for lam in (0.5, 0.8):
            model.lam = lam
            mats.append(model.similarity(img, txt))
        ens = ensemble_similarity(model, img, txt)
    torch.testing.assert_close(ens, (mats[0] + mats[1]) / 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(mats[1], reference_scores(model, b, lam=0.8), rtol=0, atol=1e-5)
    assert (mats[0] - mats[1]).abs().max() > 1e-4


def test_embed_is_a_unit_global_vector():
    for kw in ({}, {"use_alignment": False}):
        model = small_model(**kw).eval()
        b = batch(3, [4, 6, 2], seed=7)
        with torch.no_grad():
            img, txt = encode(model, b)
            ei, et = model.embed(img), model.embed(txt)
        assert ei.shape[0] == 3 and et.shape[0] == 3
        torch.testing.assert_close(ei.norm(dim=-1), torch.ones(3), rtol=0, atol=1e-5)
        if kw:  # the "mem" ablation's score is the embedding's dot product
            torch.testing.assert_close(model.similarity(img, txt), ei @ et.T, rtol=0, atol=1e-6)


def test_checkpoint_round_trip_keeps_the_memory(tmp_path):
    model = small_model(shared_memory=False).train()
    b = batch(4, [3, 5, 2, 4], seed=1)
    model.loss(*encode(model, b), b)["loss"].backward()  # the memory now differs from its init
    checkpoint.save(tmp_path / "ck", model, {"model": "acmm"})
    fresh = small_model(seed=9, shared_memory=False)
    assert not torch.equal(fresh.memory, model.memory)
    checkpoint.load(tmp_path / "ck", fresh)
    assert fresh.memory.shape == (2, 8, 12) and torch.equal(fresh.memory, model.memory)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.similarity(*encode(fresh, b)), model.similarity(*encode(model, b)),
                                   rtol=0, atol=0)


def test_presets_build():
    paper = get_preset("acmm", "paper")
    assert paper.model["mem_items"] == 128 and paper.model["mem_width"] == 256 and paper.model["hidden"] == 1024
    assert paper.train["batch_size"] == 128 and paper.train["lr"] == 5e-4 and paper.train["optimizer"] == "sgd"
    assert paper.train["epochs"] == 30 and paper.train["grad_clip"] == 2.0 and paper.train["max_len"] == 50
    for name in ("cpu", "tiny"):
        model = create_model("acmm", vocab_size=VOCAB, image_dim=IMAGE_DIM, **get_preset("acmm", name).model)
        assert model.pairwise and model.inputs.image == "regions" and model.memory.shape[0] == 1
        assert model.warmup.warmup_epochs == 1  # summed violations in epoch 0, hardest negatives after
        model.on_epoch_start(0)
        assert not model.warmup.max_violation
        model.on_epoch_start(1)
        assert model.warmup.max_violation
    assert "warmup_epochs" not in paper.model and small_model().warmup.max_violation


def test_a_few_steps_fit_a_batch():
    model = small_model().train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    b = batch(8, [4, 6, 2, 5, 3, 7, 4, 5], seed=8)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        out = model.loss(*encode(model, b), b)
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0]


# --------------------------------------------------------------------------- beyond the paper


def test_writes_of_one_step_compose_in_order_with_an_erase_between():
    """``write`` with P given weights equals the P writes in turn; two full-weight writes to one
    item leave (M o (1 - e1) + u1) o (1 - e2) + u2, not a sum of both adds."""
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(5, 4, generator=g)
    weights = torch.softmax(3 * torch.randn(6, 5, generator=g), -1)
    erase, add = torch.rand(6, 4, generator=g), torch.randn(6, 4, generator=g)
    expected = memory
    for p in range(6):
        expected = expected * (1 - weights[p, :, None] * erase[p]) + weights[p, :, None] * add[p]
    torch.testing.assert_close(write(memory, weights, erase, add), expected, rtol=0, atol=1e-6)
    one = F.one_hot(torch.tensor([2, 2]), 5).float()
    item = (memory[2] * (1 - erase[0]) + add[0]) * (1 - erase[1]) + add[1]
    torch.testing.assert_close(write(memory, one, erase[:2], add[:2])[2], item, rtol=0, atol=1e-6)


def test_top1_batched_writes_keep_item_norms_like_the_sequential_update():
    """Top-1 writes with erase ~0.5: summing a step's writes without the erase between them inflates
    the items; the in-order composition stays near the strictly sequential norms."""
    n_mem, width = 8, 6
    memory = torch.randn(1, n_mem, width, generator=torch.Generator().manual_seed(1)) / width ** 0.5
    fast = strict = summed = memory
    for step in range(6):
        region = random_heads(64, 4, n_mem, width, seed=10 + step)
        word = random_heads(64, 4, n_mem, width, seed=50 + step)
        fast = fast_update(fast, region, word, topk=1)
        strict = strict_sequential_update(strict, region, word, topk=1)
        banks = summed[0]
        for t in range(4):  # the summed composition: M o prod_p (1 - w_p e_p) + sum_p w_p u_p
            for heads in (region, word):
                w = address(heads.key[:, t], banks, heads.strength[:, t], 1)
                banks = banks * torch.prod(1 - w[:, :, None] * heads.erase[:, t, None], 0) + w.T @ heads.add[:, t]
        summed = banks[None]
    norm = lambda m: float(m.norm(dim=-1).max())  # noqa: E731
    assert norm(fast) < 1.25 * norm(strict)
    assert norm(summed) > 1.6 * norm(strict)


def test_the_write_gate_scales_the_writes_and_learns():
    n_mem, width = 6, 5
    memory = torch.randn(1, n_mem, width, generator=torch.Generator().manual_seed(2))
    region, word = random_heads(3, 4, n_mem, width, seed=1), random_heads(3, 4, n_mem, width, seed=2)
    closed = Heads(**{**region.__dict__, "gate": torch.zeros(3, 4)}), Heads(**{**word.__dict__, "gate": torch.zeros(3, 4)})
    torch.testing.assert_close(fast_update(memory, *closed), memory, rtol=0, atol=0)
    open_ = Heads(**{**region.__dict__, "gate": torch.ones(3, 4)}), Heads(**{**word.__dict__, "gate": torch.ones(3, 4)})
    torch.testing.assert_close(fast_update(memory, *open_), fast_update(memory, region, word), rtol=0, atol=1e-6)
    model = small_model(write_gate=-2.0, write_topk=1).train()
    b = batch(4, [3, 5, 2, 4], seed=1)
    heads = model.write_heads(*encode(model, b))
    assert heads[0].gate is not None and 0.05 < float(heads[0].gate.detach().mean()) < 0.2  # sigmoid(-2) = 0.12
    model.loss(*encode(model, b), b)["loss"].backward()
    for layer in (model.iface_v, model.iface_s):
        assert layer.weight.grad[-1].abs().sum() > 0  # the gate's row
        # top-1: the write keys choose the item and get no gradient; the gate does
        assert layer.weight.grad[model.mem_width + 1: 2 * model.mem_width + 1].abs().sum() == 0


def test_split_writes_read_the_other_half_and_store_both():
    model = small_model(write_split=True, enhanced_reads=True).train()
    b = batch(6, [3, 5, 2, 4, 6, 1], seed=3)
    b["same_image"] = torch.eye(6, dtype=torch.bool)
    img, txt = encode(model, b)
    m0 = model.memory.clone()
    part = lambda reps, idx: {k: v[idx] for k, v in reps.items()}  # noqa: E731
    first, second = torch.arange(3), torch.arange(3, 6)
    with torch.no_grad():
        by_first = model.update_memory(part(img, first), part(txt, first), m0)
        by_second = model.update_memory(part(img, second), part(txt, second), m0)
        expected = 0
        for h, mem in ((first, by_second), (second, by_first)):
            scores = model.combine(*model.score_terms(part(img, h), part(txt, h), mem))
            expected += triplet_ranking_loss(scores, model.margin, model.warmup.max_violation, torch.eye(3, dtype=torch.bool))
        stored = model.update_memory(part(img, second), part(txt, second), by_first)
    out = model.loss(img, txt, b)
    torch.testing.assert_close(out["loss"], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(model.memory, stored, rtol=0, atol=1e-6)
    out["loss"].backward()
    assert model.iface_v.weight.grad[model.mem_width + 1:].abs().sum() > 0  # the write heads learn


def test_minilm_token_states_as_the_words():
    model = small_model(text_input="bert", enhanced_reads=True).eval()
    assert model.inputs.text == ("tokens", "bert") and model.max_len == BERT_MAX_LEN
    g = torch.Generator().manual_seed(4)
    lengths = torch.tensor([5, 9, 3])
    mask = torch.arange(BERT_MAX_LEN)[None] < lengths[:, None]
    b = {"image": torch.randn(2, REGIONS, IMAGE_DIM, generator=g), "bert": torch.randn(3, BERT_MAX_LEN, BERT_DIM, generator=g),
         "bert_mask": mask}
    with torch.no_grad():
        s = model.similarity(*encode(model, b))
        junk = dict(b, bert=torch.where(mask[..., None], b["bert"], torch.randn(3, BERT_MAX_LEN, BERT_DIM)))
        torch.testing.assert_close(model.similarity(*encode(model, junk)), s, rtol=0, atol=1e-6)
    assert s.shape == (2, 3) and s.std() > 1e-4
    with pytest.raises(ValueError, match="text_input"):
        small_model(text_input="glove")
