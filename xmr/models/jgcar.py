"""JGCAR: joint global and co-attentive representation learning (Wang, Chen, Zhuo, Huang & Tian,
ACM MM 2018).

- **Text** (Sec. 2.1): learned word embeddings ``W_e`` (Eq. 1) -> convolutions of width 1, 2, 3
  with tanh, right-zero-padded so each keeps length T (Eq. 2) -> element-wise max over the three
  (Eq. 3) -> BiLSTM whose two directions' hidden states are summed (Eq. 4) -> ``S`` (T x d).
  With ``text_input="bert"`` (an xmr option) the word vectors of Eq. 1 are frozen MiniLM token
  states instead of embeddings learned from scratch: the pretrained text input every other model
  of xmr reads, standing in for the paper's learned ``W_e``; the rest of Eq. 2-4 is unchanged.
- **Image**: grid features (VGG-16 pool5 14 x 14 x 512 at 448^2 in the paper; here EfficientNet
  grid cells, Lite2's 9 x 9 at 260^2 in the ``cpu`` preset's runs) -> ``V = tanh(W_I r + b_I)``
  (Eq. 5) -> N x d.
- **Global representation** (Sec. 2.2): average pooling ``V^``, ``S^``; ``Omega = V^ . S^``;
  J1 bidirectional triplet (Eq. 6), J2 / J3 intra-modal triplets whose positives share a label and
  negatives share none (Eq. 7-8), J4 de-correlation of the matrix covariance (Eq. 9);
  ``J_G = J1 + l2 J2 + l3 J3 + l4 J4`` (Eq. 10). Hinge sums are averaged over their terms (the paper
  writes sums; averaging only rescales, and keeps the l's meaningful at any batch size).
- **Co-attention** (Sec. 2.3): ``A = S W_b V^T`` (Eq. 11, T x N), hidden states
  ``H^v = tanh(W_v V + b_v) * tanh(W_s S A)``, ``H^s = tanh(W_s S + b_s) * tanh(W_v V A^T)`` (Eq. 12,
  with position-wise biases b_v in R^{l x N}, b_s in R^{l x T}), attention softmaxes over regions and
  words (Eq. 13; the scalar biases b_hv, b_hs cancel in a softmax and are omitted), co-attentive
  vectors ``v_bar = sum_n a^v(n) v_n``, ``s_bar = sum_t a^s(t) s_t`` (Eq. 14) and the cosine score
  (Eq. 15). Per-item products (``S W_b``, ``W_s S``, ``W_v V``, the tanh of Eq. 12's first factors)
  are computed once per item; only A, the two A-products and the softmaxes run per pair.
- **Bi-rank loss** (Eq. 16), both directions, gamma = 10, M' negatives per anchor from the batch.
- **Joint learning** (Sec. 2.4, Eq. 17): ``J = beta J_G + (1 - beta) J_C``. beta = 1 is the GRL
  baseline (global score only); beta = 0 trains the co-attention alone (SGCAR's second network).
- **Retrieval** (Sec. 2.5): ``embed`` gives ``V^`` / ``S^`` for the first step (top K by Omega);
  ``similarity`` / ``pair_similarity`` give the co-attentive cosine that re-ranks them
  (``xmr.eval.two_step``).

Working choices, off in the ``paper`` preset (xmr options): ``normalize`` l2-normalises ``V^`` and
``S^`` so Omega is a cosine, as in VSE++ (the unnormalised dot product lets J4 and the hinge margin
trade against the features' scale); ``global_weight`` w re-ranks by ``cos(v_bar, s_bar) + w *
Omega`` instead of the co-attentive cosine alone, so the second step keeps what the first step knew
(w = 0 is the paper's score); ``global_word_mean`` adds a linear projection of the mean word vector
to ``S^`` (with MiniLM states as the words, MiniLM's own sentence embedding, which VSE++'s
``text_pool="mean"`` reads): a shortcut past Eq. 2-4 for the first step only, the co-attention
still reads ``S``. ``j1_max_violation`` makes J1 VSE++'s hardest-negative triplet (its Eq. 5,
"MH", the baseline's loss), averaged over the batch's queries, after ``warmup_epochs`` of the
paper's summed form.

Reading of Eq. 16 (the paper is terse): for pair k = (image i, sentence j) the negative sentence
set S_i^- and negative image set V_i^- are M' batch items chosen by the global score Omega (the
paper says "most dissimilar"; ``hard_negatives=True`` takes the most similar instead), never the
pair's own image. Image -> sentences: ``P = 2 - softmax over {s_bar_{j|i}} u {s_bar_{j'|i}}`` of
the positive's gamma-scaled cosine ``- exp(gamma cos(v_bar_{i|j}, s_bar_{j|i})) / sum_{v in
{v_bar_{i|j}} u {v_bar_{i'|j}}} exp(gamma cos(v_bar_{i|j}, v))``; the co-attentive vector of a
negative image is the one conditioned on the anchor's sentence. Sentence -> images mirrors it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xmr.interface import BERT_DIM, BERT_MAX_LEN, gather_rows, sentence_vectors
from xmr.losses import ViolationWarmup, triplet_ranking_loss
from xmr.models.base import Inputs, Preset, RetrievalModel, Reps, Stage, register
from xmr.models.rnn import packed_lstm
from xmr.models.text_tail import TextTail, check_tail_option
from xmr.models.text_encoders import drop_padding_columns
from xmr.optim import make_optimizer

PRESETS = {
    # Sec. 3.1: 512-d word embeddings and hidden layers, d = 256, dropout 0.5, gamma 10, M' = 30,
    # max 15 words (Flickr), SGD (global part) + RMSprop (co-attention), lr 4e-4, momentum 0.99,
    # weight decay 1e-8, batch 200, <= 128 epochs, early stop after 5 without dev improvement,
    # top-100 two-step retrieval. Train with --extractor efficientnet-lite0-448 (14 x 14 grid).
    # lambda4: the paper's lambda4 = 1 weighs J4 against J1 *summed* over B(B - 1) triplet terms;
    # J1 here is their mean, so the same balance is lambda4 = 1 / (200 * 199) ~ 2.5e-5.
    "paper": Preset(
        model=dict(word_dim=512, phrase_dim=512, d=256, att_dim=512, margin=0.2, lambda2=1.0,
                   lambda3=1.0, lambda4=2.5e-5, beta=0.5, gamma=10.0, negatives=30, dropout=0.5),
        train=dict(epochs=128, batch_size=200, lr=4e-4, momentum=0.99, weight_decay=1e-8,
                   optimizer="sgd+rmsprop", max_len=15, early_stop=5, dev_rerank_k=100, grad_clip=0.0),
        note="Wang et al. 2018, Sec. 3.1",
    ),
    # Two CPU cores, on the VSE++ baseline's inputs (EfficientNet-Lite2 9 x 9 cells at 260^2, frozen
    # MiniLM token states as the words): 256-d phrases, l = 128 and M' = 4 hardest negatives by
    # Omega (the co-attention runs on B (1 + 2 M') pairs per batch), no dropout (sampling a mask
    # over 81 x 1280 frozen features per image cost 11 % of a step); Adam, the learning rate divided
    # by 10 after 3 epochs (the baseline's inputs over-fit 6,000 images within a few epochs);
    # normalised global vectors; the re-rank adds Omega to the co-attentive cosine (w = 1 here, for
    # selection; the experiment chooses the scoring w on dev); selection on the whole dev split by
    # two-step retrieval at K = 20. lambda4 = 1e-5 and gamma = 10 were chosen by
    # the dev trials of experiments/jgcar_flickr8k.sh (1e-4 ~ 1 / (128 * 127), the paper's balance of
    # J4 against a summed J1, made J4 the largest term of J_G); lambda2 = lambda3 = 0.1 by its levers
    # stage (the keyword-label triplets at weight 1 held the global ranking part back).
    "cpu": Preset(
        model=dict(text_input="bert", phrase_dim=256, d=256, att_dim=128, margin=0.2, lambda2=0.1,
                   lambda3=0.1, lambda4=1e-5, beta=0.5, gamma=10.0, negatives=4, hard_negatives=True,
                   dropout=0.0, normalize=True, global_weight=1.0),
        train=dict(epochs=6, batch_size=128, lr=2e-4, lr_decay_epochs=[3], lr_decay=0.1, optimizer="adam",
                   max_len=15, grad_clip=2.0, dev_rerank_k=20),
        note="the baseline's inputs (train with --extractor efficientnet-lite2-260); validates by "
             "two-step retrieval (K = 20) on the whole dev split",
    ),
    "tiny": Preset(
        model=dict(word_dim=32, phrase_dim=32, d=32, att_dim=32, margin=0.2, lambda2=1.0,
                   lambda3=1.0, lambda4=1e-3, beta=0.5, gamma=10.0, negatives=8, dropout=0.0),
        train=dict(epochs=4, batch_size=32, lr=2e-3, optimizer="adam", max_len=15, grad_clip=2.0),
        note="synthetic demo",
    ),
}


def decorrelation_loss(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 9 for one modality: 1/2 (||C||_F^2 - ||diag C||^2) of the matrix covariance
    ``C(d1, d2) = 1/B sum_k (X_k(d1, :) - mu_d1) . (X_k(d2, :) - mu_d2)``.

    x: (B, L, d), L spatial positions / words (the covariance only pairs features at the same
    position); mask: (B, L) bool, False = padding word, left out of the means and the sums.
    """
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    m = mask[..., None].to(x.dtype)
    mu = (x * m).sum(0) / m.sum(0).clamp(min=1)  # (L, d): mean over the batch at each position
    centred = (x - mu) * m
    cov = torch.einsum("bld,ble->de", centred, centred) / x.size(0)
    return 0.5 * (cov.pow(2).sum() - cov.diagonal().pow(2).sum())


def intra_triplet_loss(emb: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 7 / 8: mean over (anchor, positive, negative) of [m - Omega_ap + Omega_an]_+ where positives
    share a label with the anchor and negatives share none; 0 when a batch has no such triplet."""
    lab = labels.float()
    shared = (lab @ lab.T) > 0
    eye = torch.eye(len(emb), dtype=torch.bool, device=emb.device)
    pos, neg = shared & ~eye, ~shared & ~eye
    omega = emb @ emb.T
    cost = (margin - omega[:, :, None] + omega[:, None, :]).clamp(min=0)  # [anchor, pos, neg]
    valid = pos[:, :, None] & neg[:, None, :]
    n = valid.sum()
    return (cost * valid).sum() / n if n else emb.sum() * 0.0


def bi_rank(pos: torch.Tensor, cross_neg: torch.Tensor, intra_neg: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. 16 for one direction, per anchor: ``2 - exp(g a+) / sum_{cross set} exp(g a)
    - exp(g a+) / sum_{intra set} exp(g a)``.

    pos (B,): the positive pair's cosine a+; cross_neg (B, M'): the anchor against the negatives of
    the other modality; intra_neg (B, M'): the anchor's co-attentive vector against the negatives'
    of its own modality (the intra set also holds the anchor itself, cosine 1).
    """
    cross = torch.cat([pos[:, None], cross_neg], 1)
    intra = torch.cat([torch.ones_like(pos)[:, None], intra_neg], 1)
    return (2 - torch.exp(gamma * pos - torch.logsumexp(gamma * cross, 1))
            - torch.exp(gamma * pos - torch.logsumexp(gamma * intra, 1)))


class PhraseEncoder(nn.Module):
    """Eq. 2-4: word vectors -> max over tanh(conv_c), c = 1, 2, 3 -> BiLSTM, directions summed."""

    def __init__(self, word_dim: int, phrase_dim: int, d: int, dropout: float):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(word_dim, phrase_dim, c) for c in (1, 2, 3))
        self.lstm = nn.LSTM(phrase_dim, d, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)
        self.d = d

    def forward(self, words: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """words (B, T, word_dim) (S^w of Eq. 1), lengths (B,) -> S (B, T, d) (zero at padding), mask (B, T)."""
        mask = torch.arange(words.size(1), device=words.device)[None] < lengths[:, None]
        words = self.drop(words) * mask[..., None]  # zero past the sentence
        x = words.transpose(1, 2)
        phrases = torch.stack([torch.tanh(conv(F.pad(x, (0, conv.kernel_size[0] - 1))))
                               for conv in self.convs]).amax(0).transpose(1, 2)  # Eq. 2-3
        packed = nn.utils.rnn.pack_padded_sequence(self.drop(phrases), lengths.cpu().clamp(min=1),
                                                   batch_first=True, enforce_sorted=False)
        out, _ = packed_lstm(self.lstm, packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=words.size(1))
        states = out[..., : self.d] + out[..., self.d:]  # forward + backward (Eq. 4)
        return self.drop(states) * mask[..., None], mask


@register("jgcar", presets=PRESETS)
class JGCAR(RetrievalModel):
    inputs = Inputs(image="regions", text=("tokens",), labels=True)
    pairwise = True
    data_facts = ("vocab_size", "image_dim", "n_regions", "max_len")
    has_attention_maps = True
    score_block = (16, 8192)

    def __init__(self, vocab_size: int, image_dim: int, n_regions: int = 49, max_len: int = 15,
                 word_dim: int = 512, phrase_dim: int = 512, d: int = 256, att_dim: int = 512,
                 margin: float = 0.2, lambda2: float = 1.0, lambda3: float = 1.0, lambda4: float = 1.0,
                 beta: float = 0.5, gamma: float = 10.0, negatives: int = 30, hard_negatives: bool = False,
                 dropout: float = 0.5, pair_chunk: int = 2048, text_input: str = "words",
                 normalize: bool = False, global_weight: float = 0.0, j1_max_violation: bool = False,
                 warmup_epochs: int = 0, text_tail_layers: int = 0, text_tail_lr_scale: float = 0.1,
                 global_word_mean: bool = False):
        """``n_regions`` (N) and ``max_len`` (T; MiniLM's cached width with ``text_input="bert"``)
        size the position-wise biases b_v, b_s of Eq. 12. ``text_tail_layers`` = k fine-tunes
        MiniLM's last k layers on cached lower-layer states (``text_tail.py``, as VSE++'s option) at
        ``text_tail_lr_scale`` times the learning rate. ``global_word_mean`` adds a linear projection
        of the mean word vector to S^ (the global sentence vector only; the co-attention reads S)."""
        super().__init__()
        self.j1_max_violation = j1_max_violation
        self.warmup = ViolationWarmup(warmup_epochs)
        self.inputs = self.inputs_for(text_input=text_input, text_tail_layers=text_tail_layers)
        self.text_tail = TextTail(text_tail_layers) if text_tail_layers else None
        self.text_tail_lr_scale = text_tail_lr_scale
        self.normalize, self.global_weight = normalize, float(global_weight)
        self.margin, self.lambdas = margin, (lambda2, lambda3, lambda4)
        self.beta, self.gamma, self.negatives, self.hard_negatives = beta, gamma, negatives, hard_negatives
        self.pair_chunk = max(1, int(pair_chunk))
        if text_input == "bert":
            self.word_embed, word_dim, max_len = None, BERT_DIM, BERT_MAX_LEN
        else:
            self.word_embed = nn.Embedding(vocab_size, word_dim)  # W_e (Eq. 1)
        self.text = PhraseEncoder(word_dim, phrase_dim, d, dropout)
        self.word_mean = nn.Linear(word_dim, d) if global_word_mean else None
        self.image_fc = nn.Linear(image_dim, d)  # W_I, b_I (Eq. 5)
        self.drop = nn.Dropout(dropout)
        # Co-attention parameters (Eq. 11-13).
        self.w_b = nn.Linear(d, d, bias=False)
        self.w_v = nn.Linear(d, att_dim, bias=False)
        self.w_s = nn.Linear(d, att_dim, bias=False)
        self.b_v = nn.Parameter(torch.zeros(n_regions, att_dim))
        self.b_s = nn.Parameter(torch.zeros(max_len, att_dim))
        self.w_hv = nn.Linear(att_dim, 1, bias=False)
        self.w_hs = nn.Linear(att_dim, 1, bias=False)

    @classmethod
    def inputs_for(cls, text_input: str = "words", text_tail_layers: int = 0, **_) -> Inputs:
        if text_input not in ("words", "bert"):
            raise ValueError(f"text_input must be 'words' or 'bert', not {text_input!r}")
        check_tail_option(text_tail_layers, text_input)
        return Inputs(image="regions", text=("tokens", "bert") if text_input == "bert" else ("tokens",), labels=True,
                      bert_tail=text_tail_layers)

    def param_groups(self) -> list[dict]:
        return self.scaled_param_groups((self.text_tail, self.text_tail_lr_scale))

    @property
    def uses_coattention(self) -> bool:
        return self.beta < 1

    def coattention_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.w_b, self.w_v, self.w_s, self.w_hv, self.w_hs) for p in m.parameters()] + \
            [self.b_v, self.b_s]

    def build_optimizers(self, stage: Stage, recipe: dict) -> list[torch.optim.Optimizer]:
        """Sec. 3.1: SGD for the global representation (the encoders), RMSprop for the co-attention
        (``optimizer="sgd+rmsprop"``); any other optimizer name trains everything with that one."""
        if recipe["optimizer"] != "sgd+rmsprop":
            return super().build_optimizers(stage, recipe)
        co = {id(p) for p in self.coattention_parameters()}
        return [make_optimizer("sgd", [p for p in self.parameters() if id(p) not in co], recipe),
                make_optimizer("rmsprop", self.coattention_parameters(), recipe)]

    # ------------------------------------------------------------------ per item
    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """V^ / S^: the average-pooled features, l2-normalised with ``normalize``."""
        return F.normalize(x, dim=-1) if self.normalize else x

    def encode_images(self, batch: dict) -> Reps:
        v = torch.tanh(self.image_fc(self.drop(batch["image"].float())))  # (B, N, d), Eq. 5
        q = self.w_v(v)  # W_v V
        return {"V": v, "g": self.pooled(v.mean(1)), "qv": q, "hv": torch.tanh(q + self.b_v[: v.size(1)])}

    def encode_texts(self, batch: dict) -> Reps:
        if self.word_embed is None:  # MiniLM token states as S^w (its top layers fine-tuned with a tail)
            mask = batch["bert_mask"]
            words = batch["bert"].float() if self.text_tail is None else self.text_tail(batch["bert"], mask)
            lengths = mask.sum(1)
        else:
            words, lengths = self.word_embed(batch["tokens"]), batch["lengths"]
        s, mask = self.text(words, lengths)
        g = s.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # average over the words
        if self.word_mean is not None:
            g = g + self.word_mean(sentence_vectors(words, mask))
        q = self.w_s(s)  # W_s S
        return {"S": s, "mask": mask, "g": self.pooled(g), "sw": self.w_b(s), "qs": q,
                "hs": torch.tanh(q + self.b_s[: s.size(1)])}

    def embed(self, reps: Reps) -> torch.Tensor | None:
        """The global representation V^ / S^ (first step of Sec. 2.5; scores are dot products)."""
        return reps.get("g")

    # ------------------------------------------------------------------ per pair
    def coattend(self, img: Reps, txt: Reps, aligned: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Co-attentive vectors (v_bar, s_bar) of Eq. 14 for every pair of two sets, (Ni, Nt, d) each,
        or with ``aligned`` for the pairs (image p, sentence p), (P, d) each."""
        i, j, pair = ("p", "p", "p") if aligned else ("i", "j", "ij")

        def on_img(x):
            return x if aligned else x[:, None]

        def on_txt(x):
            return x if aligned else x[None]

        a = torch.einsum(f"{j}td,{i}nd->{pair}tn", txt["sw"], img["V"])  # A_ji (Eq. 11)
        h_v = on_img(img["hv"]) * torch.tanh(torch.einsum(f"{j}tl,{pair}tn->{pair}nl", txt["qs"], a))
        h_s = on_txt(txt["hs"]) * torch.tanh(torch.einsum(f"{i}nl,{pair}tn->{pair}tl", img["qv"], a))
        a_v = torch.softmax(self.w_hv(h_v).squeeze(-1), -1)  # over regions (Eq. 13)
        logit_s = self.w_hs(h_s).squeeze(-1).masked_fill(~on_txt(txt["mask"]), float("-inf"))
        a_s = torch.softmax(logit_s, -1)  # over the sentence's words
        v_bar = torch.einsum(f"{pair}n,{i}nd->{pair}d", a_v, img["V"])
        s_bar = torch.einsum(f"{pair}t,{j}td->{pair}d", a_s, txt["S"])
        return v_bar, s_bar

    def attention_maps(self, img: Reps, txt: Reps) -> tuple[torch.Tensor, torch.Tensor]:
        """a^v (P, N) and a^s (P, T) of aligned pairs (Eq. 13), for pictures."""
        a = torch.einsum("ptd,pnd->ptn", txt["sw"], img["V"])
        h_v = img["hv"] * torch.tanh(torch.einsum("ptl,ptn->pnl", txt["qs"], a))
        h_s = txt["hs"] * torch.tanh(torch.einsum("pnl,ptn->ptl", img["qv"], a))
        logit_s = self.w_hs(h_s).squeeze(-1).masked_fill(~txt["mask"], float("-inf"))
        return torch.softmax(self.w_hv(h_v).squeeze(-1), -1), torch.softmax(logit_s, -1)

    def similarity(self, img: Reps, txt: Reps) -> torch.Tensor:
        """Co-attentive cosine (Eq. 15, plus ``global_weight`` * Omega) for every pair, in chunks of
        ``pair_chunk`` pairs; the global score Omega when the model was trained without
        co-attention (beta = 1, GRL)."""
        if not self.uses_coattention:
            return img["g"] @ txt["g"].T
        txt = drop_padding_columns(txt, whole=("g",))
        ni, nt = img["V"].size(0), txt["S"].size(0)
        bt = min(nt, self.pair_chunk)
        bi = max(1, self.pair_chunk // bt)
        rows = []
        for s in range(0, ni, bi):
            part = {k: v[s: s + bi] for k, v in img.items()}
            cols = []
            for t in range(0, nt, bt):
                v_bar, s_bar = self.coattend(part, {k: v[t: t + bt] for k, v in txt.items()})
                cols.append(F.cosine_similarity(v_bar, s_bar, dim=-1))
            rows.append(torch.cat(cols, 1))
        scores = torch.cat(rows, 0)
        return scores + self.global_weight * (img["g"] @ txt["g"].T) if self.global_weight else scores

    def pair_similarity(self, img: Reps, txt: Reps) -> torch.Tensor:
        if not self.uses_coattention:
            return (img["g"] * txt["g"]).sum(-1)
        txt = drop_padding_columns(txt, whole=("g",))
        out = []
        for s in range(0, img["V"].size(0), self.pair_chunk):
            v_bar, s_bar = self.coattend({k: v[s: s + self.pair_chunk] for k, v in img.items()},
                                         {k: v[s: s + self.pair_chunk] for k, v in txt.items()}, aligned=True)
            out.append(F.cosine_similarity(v_bar, s_bar, dim=-1))
        scores = torch.cat(out)
        return scores + self.global_weight * (img["g"] * txt["g"]).sum(-1) if self.global_weight else scores

    # ------------------------------------------------------------------ training
    def global_loss(self, img: Reps, txt: Reps, batch: dict) -> dict:
        """J_G (Eq. 10) and its parts."""
        b = img["g"].size(0)
        omega = img["g"] @ txt["g"].T
        if self.j1_max_violation and self.warmup.max_violation:  # the hardest negative per query
            j1 = triplet_ranking_loss(omega, self.margin, True, batch.get("same_image")) / b
        else:  # the mean over all B (B - 1) triplets
            j1 = triplet_ranking_loss(omega, self.margin, False, batch.get("same_image")) / (b * (b - 1))
        parts = {"j1": j1}
        l2, l3, l4 = self.lambdas
        labels = batch.get("labels")
        zero = omega.sum() * 0.0
        parts["j2"] = intra_triplet_loss(img["g"], labels, self.margin) if labels is not None and l2 else zero
        parts["j3"] = intra_triplet_loss(txt["g"], labels, self.margin) if labels is not None and l3 else zero
        parts["j4"] = decorrelation_loss(img["V"]) + decorrelation_loss(txt["S"], txt["mask"]) if l4 else zero
        parts["j_g"] = j1 + l2 * parts["j2"] + l3 * parts["j3"] + l4 * parts["j4"]
        return parts

    def pick_negatives(self, img: Reps, txt: Reps, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """For each pair k, M' negative sentences and M' negative images (batch row indices) by the
        global score Omega: the least similar (the paper's wording) or, with ``hard_negatives``, the
        most similar; never an item of pair k's own image."""
        with torch.no_grad():
            omega = img["g"] @ txt["g"].T
            same = batch.get("same_image")
            own = torch.eye(len(omega), dtype=torch.bool)
            own = own | same if same is not None else own
            m = min(self.negatives, int((~own).sum(1).min()))
            sign = 1.0 if self.hard_negatives else -1.0
            ranked = (sign * omega).masked_fill(own, float("-inf"))
            neg_txt = ranked.topk(m, dim=1).indices  # sentences for image row k
            neg_img = ranked.T.topk(m, dim=1).indices  # images for sentence row k
        return neg_txt, neg_img

    def rank_loss(self, img: Reps, txt: Reps, batch: dict) -> torch.Tensor:
        """J_C: the bi-rank loss of Eq. 16 in both directions, averaged over the batch's pairs."""
        txt = drop_padding_columns(txt, whole=("g",))
        b = img["V"].size(0)
        neg_txt, neg_img = self.pick_negatives(img, txt, batch)
        m = neg_txt.size(1)
        k = torch.arange(b)
        # Aligned pairs: (k, k), (k, neg sentence), (neg image, k).
        rows = torch.cat([k, k.repeat_interleave(m), neg_img.reshape(-1)])
        cols = torch.cat([k, neg_txt.reshape(-1), k.repeat_interleave(m)])
        v_bar, s_bar = self.coattend(gather_rows(img, rows), gather_rows(txt, cols), aligned=True)
        v_pos, s_pos = v_bar[:b], s_bar[:b]
        v_vs_negtxt, s_negtxt = v_bar[b: b + b * m].view(b, m, -1), s_bar[b: b + b * m].view(b, m, -1)
        v_negimg, s_vs_negimg = v_bar[b + b * m:].view(b, m, -1), s_bar[b + b * m:].view(b, m, -1)
        pos = F.cosine_similarity(v_pos, s_pos, dim=-1)  # (B,)
        # Image -> sentences: cross set {s_bar_{j|i}} u S_i^-, intra set {v_bar_{i|j}} u V_i^-.
        to_txt = bi_rank(pos, F.cosine_similarity(v_vs_negtxt, s_negtxt, dim=-1),
                         F.cosine_similarity(v_pos[:, None], v_negimg, dim=-1), self.gamma)
        # Sentence -> images: cross set {v_bar_{i|j}} u V_j^-, intra set {s_bar_{j|i}} u S_j^-.
        to_img = bi_rank(pos, F.cosine_similarity(v_negimg, s_vs_negimg, dim=-1),
                         F.cosine_similarity(s_pos[:, None], s_negtxt, dim=-1), self.gamma)
        return (to_txt + to_img).mean()

    def on_epoch_start(self, epoch: int) -> None:
        self.warmup.on_epoch_start(epoch)

    def loss(self, img: Reps, txt: Reps, batch: dict) -> dict:
        """J = beta J_G + (1 - beta) J_C (Eq. 17)."""
        parts = self.global_loss(img, txt, batch) if self.beta > 0 else {}
        if self.uses_coattention:
            parts["j_c"] = self.rank_loss(img, txt, batch)
        loss = self.beta * parts.get("j_g", 0.0) + (1 - self.beta) * parts.get("j_c", 0.0)
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}
