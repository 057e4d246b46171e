"""MMCA: Multi-Modality Cross Attention (Wei, Zhang, Li, Zhang, Wu, CVPR 2020).

Two branches score an image-sentence pair (Sec. 3.5, ``S(I, T) = i0 . c0 + alpha * i1 . c1``):

- **Self-attention module** (Sec. 3.3), computed once per item. Image: region features ->
  FC to ``d`` (``R``, Sec. 3.2) -> one Transformer unit (Eq. 1-4: multi-head scaled dot-product
  attention and a position-wise FFN, each followed by residual + LayerNorm) -> average pooling
  (Eq. 5) -> l2 = ``i0``. Text: frozen BERT token states ``E`` -> 1-d CNN with windows 1, 2, 3
  and ReLU (Eq. 6) -> max over word positions -> concatenation -> FC (Eq. 7) -> l2 = ``c0``.
- **Cross-attention module** (Sec. 3.4), computed per pair: the regions ``R`` and the word states
  projected to ``d`` are stacked, ``Y = (R; E)``, and passed through another Transformer unit
  whose Q/K/V projections are shared by both modalities (Eq. 8-14), so regions attend to words
  and words to regions as well as to their own modality. ``Y_c`` is split; regions are averaged
  -> l2 = ``i1``; words go through a second 1-d CNN + max pool + FC -> l2 = ``c1``.

Training (Eq. 15): bidirectional hinge triplet loss with the hardest in-batch negative, margin
0.2, which needs ``S`` for all B x B pairs of a batch. With ``train_negatives=k`` (an xmr option,
not in the paper) the cross branch scores only the positives and each row's and column's ``k``
hardest negatives by ``i0 . c0``; every other pair counts as no negative, which is what two-step
retrieval does at test (items outside the i0 . c0 shortlist rank below it). It buys batch 128 at
the cost of batch 32 with all pairs. ``warmup_epochs`` use the sum of violations (VSE++'s Eq. 4)
before the hardest negative. ``cross_dim`` (an xmr option; the paper uses d for both modules)
gives the cross module its own, narrower width: R and the word states are projected to it, so the
per-pair cost, which grows fast with the width, stays small while the per-item branch is wide.
The cross branch is computed in batched
tensor passes over chunks of at most ``pair_chunk`` pairs, never a Python loop over pairs. Since
W^Q, W^K, W^V act on each fragment alone, Q/K/V and the intra-modality attention blocks
(Q_R K_R^T, Q_E K_E^T of Eq. 12) are computed once per image / sentence; per pair only the
inter-modality blocks (Q_R K_E^T, Q_E K_R^T), the exact merge of the two softmax parts through
their log-sum-exps, W^O, the FFN, the LayerNorms and the text CNN run. This equals running the
unit on each stacked sequence (``tests/test_mmca.py`` checks it against a per-pair loop).
Training keeps all B x B pairs' activations (several GB at d = 128, B = 64);
``grad_checkpoint=True`` recomputes each chunk in backward instead (about half the memory, slower).

Stand-ins (see ``xmr/features``): EfficientNet grid cells (1280-d; Lite2 at 260^2 gives 9 x 9, the
VSE++ baseline's features) for the bottom-up Faster R-CNN regions (2048-d), MiniLM-L6 (384-d) for BERT-base (768-d); both stay frozen, as the
paper keeps BERT fixed. Padding word positions (``bert_mask`` False) are masked out as attention
keys, zeroed before the convolutions and excluded (-inf) from the max pool, so they never change a
score (every sentence needs one valid position; BERT's [CLS]/[SEP] always are). The paper's text
says the FC of Eq. 7 is followed by l2 normalisation while the equation writes a LayerNorm; we
follow the text (FC -> l2) so that both inner products are cosines. The cross branch's CNN also
ends in an FC to ``d`` (so i1 . c1 is defined), "similar to the last few operations in the
self-attention module". The paper states no dropout; the units use ``dropout`` on the sublayer
outputs and the FFN's hidden layer (none on attention weights).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from xmr.interface import gather_rows
from xmr.losses import ViolationWarmup, triplet_ranking_loss
from xmr.models.base import Inputs, Preset, RetrievalModel, Reps, register
from xmr.models.text_encoders import drop_padding_columns

PRESETS = {
    # Sec. 4.2: d-dim space, Transformer units with 16 heads, 256 filters per window, Adam at
    # 2e-4 for 10 epochs then 2e-5 for 10 more, batch 64, margin 0.2, alpha 0.2 (Sec. 4.4).
    # The FFN is d -> d -> d as Eq. 4 writes it (W1, W2 in R^{dx x dx}).
    "paper": Preset(
        model=dict(d=256, heads=16, ff_dim=256, filters=256, alpha=0.2, margin=0.2, dropout=0.1),
        train=dict(epochs=20, lr=2e-4, lr_decay_epochs=[10], lr_decay=0.1, batch_size=64,
                   optimizer="adam", grad_clip=2.0),
        note="Wei et al. 2020, Sec. 4.2",
    ),
    # Two CPU cores: the paper's d = 256 per-item branch, a narrow (64-d, 4-head) cross branch,
    # which is scored in training for the positives and each row's / column's 4 hardest negatives
    # by i0 . c0 only, so batch 128 fits; a warm-up epoch of summed violations; the learning rate
    # divided by 10 after 3 epochs (at 2e-4 dev rsum peaks at epoch 3 and then falls: the model
    # over-fits 6,000 images); selection on the whole dev split by two-step retrieval at K = 20.
    "cpu": Preset(
        model=dict(d=256, heads=16, ff_dim=256, filters=256, cross_dim=64, cross_heads=4, cross_filters=64,
                   alpha=0.2, margin=0.2, dropout=0.0, train_negatives=4, warmup_epochs=1),
        train=dict(epochs=6, lr=2e-4, lr_decay_epochs=[3], lr_decay=0.1, batch_size=128,
                   optimizer="adam", grad_clip=2.0, dev_rerank_k=20),
        note="paper widths per item, a 64-d cross branch trained on i0.c0-shortlisted negatives; "
             "validates by two-step retrieval (K = 20) on the whole dev split",
    ),
    # Synthetic-data tests and demo.
    # Batches of 16 (256 pairs per cross pass) and no dropout keep a CPU epoch short.
    "tiny": Preset(
        model=dict(d=64, heads=4, ff_dim=64, filters=32, alpha=0.2, margin=0.2, dropout=0.0),
        train=dict(epochs=4, lr=1e-3, lr_decay_epochs=[3], lr_decay=0.1, batch_size=16,
                   optimizer="adam", grad_clip=2.0),
        note="synthetic demo",
    ),
}


class TransformerUnit(nn.Module):
    """One Transformer unit (Fig. 3): multi-head attention (Eq. 1-3) and the position-wise FFN
    (Eq. 4), each followed by a residual connection and LayerNorm (post-norm).

    Split into ``project`` (the per-fragment Q/K/V of Eq. 2 / Eq. 8-10), ``attend`` (Eq. 1 / 11)
    and ``finish`` (W^O of Eq. 3, the FFN and the two residual + LayerNorm steps), so the cross
    module can project each modality once and run only the pair-dependent part per pair.
    """

    def __init__(self, d: int, heads: int, ff_dim: int, dropout: float = 0.1):
        super().__init__()
        if d % heads:
            raise ValueError(f"d={d} is not divisible by heads={heads}")
        self.d, self.heads = d, heads
        self.qkv = nn.Linear(d, 3 * d)  # W^Q, W^K, W^V of all heads
        self.out = nn.Linear(d, d)  # W^O
        self.norm1 = nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, ff_dim), nn.Linear(ff_dim, d)
        self.norm2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., L, d) -> Q, K, V, each (..., heads, L, d / heads) (Eq. 2, Eq. 8-10)."""
        *lead, length, _ = x.shape
        q, k, v = self.qkv(x).view(*lead, length, 3, self.heads, self.d // self.heads).unbind(-3)
        return q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(Q K^T / sqrt(d_k)) V per head, heads concatenated (Eq. 1-3 before W^O; Eq. 11).

        q, k, v: (N, heads, L, d_k); key_mask: (N, L) bool, False = padding, never attended to.
        Returns (N, L, d).
        """
        mask = None if key_mask is None else key_mask[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        n, _, length, _ = a.shape
        return a.transpose(1, 2).reshape(n, length, self.d)

    def finish(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """LN(x + MultiHead W^O), then LN(h + FFN(h)) with FFN(h) = ReLU(h W1 + b1) W2 + b2 (Eq. 3-4)."""
        h = self.norm1(x + self.drop(self.out(a)))
        return self.norm2(h + self.drop(self.ff2(self.drop(F.relu(self.ff1(h))))))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over one set of fragments: x (N, L, d) -> (N, L, d)."""
        q, k, v = self.project(x)
        return self.finish(x, self.attend(q, k, v, key_mask))


class TextCNN(nn.Module):
    """Eq. 6-7: 1-d convolutions with windows ``windows`` (uni-, bi-, tri-gram) and ReLU,
    max-pooling over the valid word positions, concatenation, FC.

    ``p_{l,k}`` is computed for every valid start position k = 1..n; windows that run past the
    last word see zeros (padding states are zeroed first), so the result depends only on the
    sentence's own n states, not on the batch's padded width or on padding contents.
    """

    def __init__(self, in_dim: int, filters: int, out_dim: int, windows: tuple[int, ...] = (1, 2, 3)):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(in_dim, filters, w) for w in windows)
        self.fc = nn.Linear(filters * len(windows), out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (N, T, C), mask (N, T) bool -> (N, out_dim); every row needs one valid position."""
        x = x.masked_fill(~mask[..., None], 0.0).transpose(1, 2)  # (N, C, T)
        pad = ~mask[:, None, :]
        pooled = []
        for conv in self.convs:
            p = F.relu(conv(F.pad(x, (0, conv.kernel_size[0] - 1))))  # (N, filters, T), Eq. 6
            pooled.append(p.masked_fill(pad, float("-inf")).amax(-1))  # q_l = max_k p_{l,k}
        return self.fc(torch.cat(pooled, -1))  # W_e concat(q_1, q_2, q_3) + b_e (Eq. 7)


def _softmax_lse(logits: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax over ``dim`` and its log-sum-exp (``dim`` removed).

    Written out (max, exp, sum) because torch's CPU softmax / logsumexp are slow on short rows
    (a sentence's few words); the max is a constant shift for both results, so it is detached.
    Every row needs one finite logit.
    """
    m = logits.detach().amax(dim, keepdim=True)
    e = torch.exp(logits - m)
    s = e.sum(dim, keepdim=True)
    return e / s, (m + s.log()).squeeze(dim)


@register("mmca", presets=PRESETS)
class MMCA(RetrievalModel):
    inputs = Inputs(image="regions", text=("tokens", "bert"))
    pairwise = True
    data_facts = ("image_dim",)  # the text side reads frozen BERT states, no vocabulary
    # Evaluation scores 16 images x 8192 captions per similarity() call (each call runs in
    # pair_chunk pieces); small image blocks keep evaluation's diagonal pre-pass cheap.
    score_block = (16, 8192)

    def __init__(self, image_dim: int, d: int = 256, heads: int = 16,
                 ff_dim: int | None = None, filters: int = 256, alpha: float = 0.2,
                 margin: float = 0.2, dropout: float = 0.1, bert_dim: int = 384,
                 pair_chunk: int = 1024, grad_checkpoint: bool = False, cross_dim: int | None = None,
                 cross_heads: int | None = None, cross_filters: int | None = None,
                 train_negatives: int = 0, warmup_epochs: int = 0):
        """``ff_dim`` defaults to ``d`` (Eq. 4); ``pair_chunk`` bounds the pairs per cross-attention pass; with
        ``grad_checkpoint`` each training chunk's activations are recomputed in backward, so
        training memory is that of one chunk rather than of all B x B pairs. ``cross_dim``,
        ``cross_heads``, ``cross_filters`` default to ``d``, ``heads``, ``filters`` (the paper; a
        narrower cross unit's FFN is ``cross_dim`` wide, as Eq. 4's is d wide);
        ``train_negatives`` = 0 scores all B x B pairs in training (the paper)."""
        super().__init__()
        ff_dim = ff_dim or d
        cross_dim = cross_dim or d
        if train_negatives < 0:
            raise ValueError(f"train_negatives must be >= 0, not {train_negatives}")
        self.d, self.alpha, self.margin = d, alpha, margin
        self.pair_chunk, self.grad_checkpoint = max(1, int(pair_chunk)), grad_checkpoint
        self.train_negatives = int(train_negatives)
        self.warmup = ViolationWarmup(warmup_epochs)
        # Sec. 3.2: FC from region features to R (used by both modules).
        self.image_fc = nn.Linear(image_dim, d)
        # Sec. 3.3: image self-attention unit, and the text CNN over BERT states (Eq. 6-7).
        self.image_unit = TransformerUnit(d, heads, ff_dim, dropout)
        self.text_cnn = TextCNN(bert_dim, filters, d)
        # Sec. 3.4: word states projected to the cross width so they stack with R (itself
        # projected when the cross module is narrower); the cross unit; its text CNN.
        self.cross_in = nn.Linear(d, cross_dim) if cross_dim != d else nn.Identity()
        self.word_fc = nn.Linear(bert_dim, cross_dim)
        self.cross_unit = TransformerUnit(cross_dim, cross_heads or heads, ff_dim if cross_dim == d else cross_dim,
                                          dropout)
        self.cross_cnn = TextCNN(cross_dim, cross_filters or filters, cross_dim)

    # ------------------------------------------------------------------ per item
    def encode_images(self, batch: dict) -> Reps:
        """Regions R = FC(O) (Sec. 3.2) and i0 = l2(mean_k TransformerUnit(R)_k) (Eq. 5)."""
        regions = self.image_fc(batch["image"].float())
        i0 = F.normalize(self.image_unit(regions).mean(1), dim=-1)
        return {"i0": i0, "regions": self.cross_in(regions)}

    def encode_texts(self, batch: dict) -> Reps:
        """c0 = l2(TextCNN(E)) (Eq. 6-7) on the frozen BERT states E; the word fragments projected
        to d for the cross module, kept at the batch's full width with their mask."""
        states, mask = batch["bert"].float(), batch["bert_mask"].bool()
        c0 = F.normalize(self.text_cnn(states, mask), dim=-1)
        return {"c0": c0, "words": self.word_fc(states), "word_mask": mask}

    def embed(self, reps: Reps) -> torch.Tensor | None:
        """The self-attention embeddings i0 / c0: a cheap first stage (S without the cross term)."""
        return reps["i0"] if "i0" in reps else reps.get("c0")

    # ------------------------------------------------------------------ per pair
    def cross_items(self, regions: torch.Tensor, words: torch.Tensor, mask: torch.Tensor) -> Reps:
        """The parts of the cross unit's attention that depend on one side only, once per item.

        Q/K/V of every fragment (Eq. 8-10: W^Q, W^K, W^V are shared by both modalities, so a
        fragment's projections do not depend on its partner) and the intra-modality attention
        blocks of Eq. 12, softmax(Q_R K_R^T / sqrt(d_k)) V_R and softmax(Q_E K_E^T / sqrt(d_k)) V_E
        (padding words masked as keys), with their log-sum-exps so that the per-pair
        inter-modality blocks can later be merged into the exact softmax over all K + n keys.
        """
        unit = self.cross_unit
        scale = (unit.d // unit.heads) ** -0.5
        qr, kr, vr = unit.project(regions)  # (Ni, h, K, dk)
        qe, ke, ve = unit.project(words)  # (Nt, h, n, dk)
        qr, qe = qr * scale, qe * scale  # the 1 / sqrt(d_k) of Eq. 1 / 11, applied once per item
        a_rr, lse_rr = _softmax_lse(qr @ kr.transpose(-1, -2))
        a_ee, lse_ee = _softmax_lse((qe @ ke.transpose(-1, -2)).masked_fill(~mask[:, None, None, :], float("-inf")))
        return {"regions": regions, "qr": qr, "kr": kr, "vr": vr, "o_rr": a_rr @ vr, "lse_rr": lse_rr,
                "words": words, "mask": mask, "qe": qe, "ke": ke, "ve": ve, "o_ee": a_ee @ ve, "lse_ee": lse_ee}

    def cross_pairs(self, img: Reps, txt: Reps, aligned: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention module (Sec. 3.4) for every (image, sentence) pair of two sets, or with
        ``aligned`` for the pairs (image p, sentence p) of two equally long sets (re-ranking).

        ``img`` / ``txt`` come from ``cross_items``. Returns unit-norm i1 and c1, (Ni, Nt, d) each
        ((P, d) when aligned). Equivalent to running ``cross_unit`` on each pair's stacked sequence
        Y = (R; E) with padding words masked as keys (Eq. 11), but computed for all pairs at once:
        the attention logits of Eq. 12 split into the per-item blocks Q_R K_R^T, Q_E K_E^T
        (``cross_items``) and the per-pair blocks Q_R K_E^T, Q_E K_R^T; each row's softmax over its
        K + n keys is recombined exactly from the two blocks' log-sum-exps, giving R_up (Eq. 13)
        and E_up (Eq. 14). W^O, the FFN and the LayerNorms then run on all pairs' fragments,
        regions of Y_c are averaged -> i1, words of Y_c go through the 1-d CNN + max pool -> c1.
        """
        unit = self.cross_unit
        # Einsum indices of the image side, the sentence side and the pair dims: a grid (i, j) or
        # one aligned pair index p. Per-item tensors get a broadcast dim for the other side.
        i, j, pair = ("p", "p", "p") if aligned else ("i", "j", "ij")

        def on_img(x: torch.Tensor) -> torch.Tensor:
            return x if aligned else x[:, None]

        def on_txt(x: torch.Tensor) -> torch.Tensor:
            return x if aligned else x[None]

        regions, words, mask = img["regions"], txt["words"], on_txt(txt["mask"])
        k, d, n = regions.size(-2), regions.size(-1), mask.size(-1)  # d: the cross module's width
        # Regions attend to words: softmax(Q_R K_E^T) V_E per pair, merged with the per-image block.
        # (Both per-pair logit blocks are laid out (..., h, n, K): reductions over the few words
        # run along dim -2, which is much faster on CPU than along a short last dim.)
        l_re = torch.einsum(f"{i}hkc,{j}hnc->{pair}hnk", img["qr"], txt["ke"])
        l_re = l_re.masked_fill(~mask[..., None, :, None], float("-inf"))
        a_re, lse_re = _softmax_lse(l_re, dim=-2)
        o_re = torch.einsum(f"{pair}hnk,{j}hnc->{pair}hkc", a_re, txt["ve"])
        w_rr = torch.sigmoid(on_img(img["lse_rr"]) - lse_re)[..., None]  # share of own keys
        r_up = torch.lerp(o_re, on_img(img["o_rr"]).expand_as(o_re), w_rr)  # (..., h, K, dk)
        # Words attend to regions: softmax(Q_E K_R^T) V_R per pair, merged with the per-sentence block.
        l_er = torch.einsum(f"{j}hnc,{i}hkc->{pair}hnk", txt["qe"], img["kr"])
        a_er, lse_er = _softmax_lse(l_er)
        o_er = torch.einsum(f"{pair}hnk,{i}hkc->{pair}hnc", a_er, img["vr"])
        w_ee = torch.sigmoid(on_txt(txt["lse_ee"]) - lse_er)[..., None]
        e_up = torch.lerp(o_er, on_txt(txt["o_ee"]).expand_as(o_er), w_ee)  # (..., h, n, dk)
        # Concatenate heads, then W^O, residual + LayerNorm, FFN, residual + LayerNorm (Eq. 3-4).
        lead = r_up.shape[:-3]
        r_c = unit.finish(on_img(regions), r_up.transpose(-3, -2).reshape(*lead, k, d))
        e_c = unit.finish(on_txt(words), e_up.transpose(-3, -2).reshape(*lead, n, d))
        i1 = F.normalize(r_c.mean(-2), dim=-1)
        c1 = self.cross_cnn(e_c.reshape(-1, n, d), mask.expand(*lead, n).reshape(-1, n))
        return i1, F.normalize(c1, dim=-1).view(*lead, d)

    def _cross_sides(self, regions: torch.Tensor, words: torch.Tensor, mask: torch.Tensor) -> tuple[Reps, Reps]:
        trimmed = drop_padding_columns({"words": words, "mask": mask})  # BERT states come at full max_len
        words, mask = trimmed["words"], trimmed["mask"]
        parts = self.cross_items(regions, words, mask)
        img = {key: parts[key] for key in ("regions", "qr", "kr", "vr", "o_rr", "lse_rr")}
        txt = {key: parts[key] for key in ("words", "mask", "qe", "ke", "ve", "o_ee", "lse_ee")}
        return img, txt

    def cross_embeddings(self, img: Reps, txt: Reps) -> tuple[torch.Tensor, torch.Tensor]:
        """(i1, c1), each (Ni, Nt, d), for every pair of two encoded sets, in one pass (no chunks)."""
        return self.cross_pairs(*self._cross_sides(img["regions"], txt["words"], txt["word_mask"]))

    def cross_scores(self, regions: torch.Tensor, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """i1 . c1 for every pair, (Ni, Nt), in chunks of at most ``pair_chunk`` pairs; each chunk is
        one batched pass (and, when training with ``grad_checkpoint``, recomputed in backward)."""
        img, txt = self._cross_sides(regions, words, mask)
        ni, nt = regions.size(0), txt["words"].size(0)
        bt = min(nt, self.pair_chunk)
        bi = max(1, self.pair_chunk // bt)
        use_ckpt = self.grad_checkpoint and torch.is_grad_enabled() and self.training

        def block(*tensors: torch.Tensor) -> torch.Tensor:
            i1, c1 = self.cross_pairs(dict(zip(img, tensors[:len(img)])), dict(zip(txt, tensors[len(img):])))
            return (i1 * c1).sum(-1)

        rows = []
        for s in range(0, ni, bi):
            cols = []
            for t in range(0, nt, bt):
                tensors = [v[s: s + bi] for v in img.values()] + [v[t: t + bt] for v in txt.values()]
                cols.append(checkpoint(block, *tensors, use_reentrant=False) if use_ckpt else block(*tensors))
            rows.append(torch.cat(cols, 1))
        return torch.cat(rows, 0)

    def similarity(self, img: Reps, txt: Reps) -> torch.Tensor:
        """S(I, T) = i0 . c0 + alpha * i1 . c1 (Sec. 3.5) for every pair: (Ni, Nt)."""
        scores = img["i0"] @ txt["c0"].T
        if self.alpha:
            scores = scores + self.alpha * self.cross_scores(img["regions"], txt["words"], txt["word_mask"])
        return scores

    def pair_similarity(self, img: Reps, txt: Reps) -> torch.Tensor:
        """S of the aligned pairs (image p, sentence p): (P,), in chunks of ``pair_chunk`` pairs."""
        rows = torch.arange(img["i0"].size(0), device=img["i0"].device)
        return self.indexed_pair_similarity(img, txt, rows, rows)

    def indexed_pair_similarity(self, img: Reps, txt: Reps, img_index: torch.Tensor,
                                txt_index: torch.Tensor) -> torch.Tensor:
        """S of the pairs (image img_index[p], sentence txt_index[p]): (P,)."""
        scores = (img["i0"][img_index] * txt["c0"][txt_index]).sum(-1)
        if not self.alpha:
            return scores
        return scores + self.alpha * self.indexed_cross_scores(img, txt, img_index, txt_index)

    def indexed_cross_scores(self, img: Reps, txt: Reps, img_index: torch.Tensor,
                             txt_index: torch.Tensor) -> torch.Tensor:
        """i1 . c1 of the pairs (image img_index[p], sentence txt_index[p]): (P,). The per-item parts
        of the cross-attention (``cross_items``: projections and the own-modality attention blocks)
        are computed once per distinct image and sentence, then gathered for each pair; only the
        per-pair blocks run P times, in chunks of ``pair_chunk`` pairs."""
        images, img_of_pair = img_index.unique(return_inverse=True)
        sentences, txt_of_pair = txt_index.unique(return_inverse=True)
        img_parts, txt_parts = self._cross_sides(img["regions"].index_select(0, images),
                                                 txt["words"].index_select(0, sentences),
                                                 txt["word_mask"].index_select(0, sentences))
        cross = []
        for s in range(0, img_index.numel(), self.pair_chunk):
            ip, tp = img_of_pair[s: s + self.pair_chunk], txt_of_pair[s: s + self.pair_chunk]
            i1, c1 = self.cross_pairs(gather_rows(img_parts, ip), gather_rows(txt_parts, tp), aligned=True)
            cross.append((i1 * c1).sum(-1))
        return torch.cat(cross)

    def shortlist_scores(self, img: Reps, txt: Reps, positives: torch.Tensor | None = None) -> torch.Tensor:
        """The (B, B) training scores under ``train_negatives = k``: S for the diagonal (the
        positives) and for each row's and each column's k hardest negatives by i0 . c0, -inf
        elsewhere (no negative, as outside a two-step shortlist). ``positives`` (B, B bool) marks
        further matching pairs, which are never shortlisted as negatives."""
        s0 = img["i0"] @ txt["c0"].T
        b = s0.size(0)
        eye = torch.eye(b, dtype=torch.bool, device=s0.device)
        blocked = eye if positives is None else eye | positives.bool()
        ranked = s0.detach().masked_fill(blocked, float("-inf"))
        k = min(self.train_negatives, b - 1)
        keep = eye.clone()
        keep.scatter_(1, ranked.topk(k, dim=1).indices, True)  # each image's hardest captions
        keep.scatter_(0, ranked.topk(k, dim=0).indices, True)  # each caption's hardest images
        keep &= ~blocked | eye
        rows, cols = keep.nonzero(as_tuple=True)
        cross = torch.zeros_like(s0).index_put((rows, cols), self.indexed_cross_scores(img, txt, rows, cols))
        return (s0 + self.alpha * cross).masked_fill(~keep, float("-inf"))

    def loss(self, img: Reps, txt: Reps, batch: dict) -> dict:
        """Eq. 15: bidirectional hinge triplet loss, hardest in-batch negatives, margin m (summed
        violations during ``warmup_epochs``), over all pairs or the i0 . c0 shortlist."""
        positives = batch.get("same_image")
        if self.train_negatives and self.alpha:
            scores = self.shortlist_scores(img, txt, positives)
        else:
            scores = self.similarity(img, txt)
        loss = triplet_ranking_loss(scores, self.margin, self.warmup.max_violation, positives)
        return {"loss": loss}

    def on_epoch_start(self, epoch: int) -> None:
        self.warmup.on_epoch_start(epoch)
