"""ACMM: Aligned Cross-Modal Memory (Huang & Wang, ICCV 2019).

- **Generic representations** (Sec. 3.1): region features (EfficientNet-Lite0 7 x 7 grid cells
  stand in for the Faster R-CNN regions, ``docs/substitutes.md``) -> FC to the model width H;
  word vectors (``word_dim``) initialised through ``word_init``: GloVe by default, or a Skip-Gram
  trained on the training captions as in the paper (recipe ``word_vectors = "skipgram"``).
- **Relation modelling** (Sec. 3.2, "Semantic Relation Modeling"): a bidirectional GRU over the
  words (its two directions averaged, padding packed away) gives ``S`` (J x H); one graph
  convolution over the regions' appearance-similarity graph (Wang & Gupta [44]: edge weights
  ``softmax_j phi(x_i)^T phi'(x_j)``) gives ``A = X + ReLU(Graph X W_g)`` (I x H). The paper omits
  the GCN's formulas; the residual single-layer form is our choice. ``relation=False`` is the
  ablation "align (w/o relation)": S = the word vectors through a linear map to H, A = the FC
  region features.
- **Cross-modal alignment** (Sec. 3.2 equation): ``g(s_j, a_i) = (P s_j)^T (Q a_i)``,
  ``G = softmax over regions i``, ``V = G A W``: every word j gets an aligned visual vector v_j.
- **Interface vectors** (Sec. 3.2): ``t^V(v_j)``, ``t^S(s_j)`` (linear): read key k^r (W), read
  strength beta^r = oneplus, write key k^w, write strength beta^w = oneplus, erase e = sigmoid,
  write vector u.
- **Memory** (Sec. 3.3): items M (N x W); content addressing ``theta(k, M_i, beta) = softmax_i
  beta cos(k, M_i)``; reads ``r = sum_i w_i M_i``; update ``M_i <- M_i o (1 - w_i e) + w_i u``, the
  region side first, then the word side. No dynamic allocation (the paper drops it).
  ``write_topk`` (not in the paper; 0 = its dense addressing) restricts each write to its top-k items.
- **Score** (Eq. 1): ``s = mean_j cos(r^V_j, r^S_j) + lam mean_j cos(v_j, s_j)`` over the real
  words; **loss** (Sec. 3.4): bidirectional hinge with the hardest in-batch negatives (VSE++ MH),
  margin m, on the B x B score matrix. ``warmup_epochs`` (not in the paper; VSE++'s schedule) sums
  the violations over all negatives for the first epochs: from a random start the hardest-negative
  loss sits at its collapsed value (every score equal, loss 2 B m), which summed violations leave.
- **ACMM*** (Sec. 4.5): ``ensemble_similarity`` averages the score matrices of lam = 0.5 and 0.8 of
  ONE trained model, which equals that model scored at lam = 0.65 (Eq. 1 is linear in lam). The
  paper more plausibly ensembles two models trained at the two lambdas; that reading is not
  implemented here.

Memory, persistence and gradients (our decisions; the paper gives none of these details):

- The memory is a registered buffer ``memory`` of shape (banks, N, W), random-initialised
  (N(0, 1/W), so items start distinct: from equal items content addressing could never tell them
  apart), PERSISTENT for the whole training (never wiped per batch) and checkpointed with the
  weights. Bank 0 serves the region side and bank -1 the word side (one shared bank, or two with
  ``shared_memory=False``).
- It changes only inside ``loss`` in training mode with gradients enabled: ``model.eval()``,
  ``torch.no_grad()``, ``similarity``, ``pair_similarity`` and ``write_weights`` read it frozen.
  The update uses only the matching pairs (the diagonal) of the batch, B x J x 2 writes (Sec. 4.2);
  under DDP ``loss`` sees the all-gathered global batch, so every rank applies the same
  deterministic update (``docs/design.md``, distributed training).
- Gradient flow (a): in a training step the stored state M0 is a constant (detached); the batch's
  writes give ``M1 = update(M0, writes)``, differentiable in the write interface vectors; with
  ``read_after_write`` (default) all B x B pairs read from M1, so gradients flow through the reads
  into the read interface vectors, through M1 into the write keys/strengths/erase/write vectors,
  and on into the alignment and both encoders. ``M1.detach()`` is stored: truncated BPTT with one
  batch per window. Consequence: in training a pair's reads see its own positive pair's fresh
  writes, while evaluation reads the frozen memory left by the last training batch.
  ``read_after_write=False`` reads M0 instead (training matches evaluation, but the write heads
  then get no gradient at all and stay at their initialisation).
- Sparse writes (``write_topk = 1`` in the cpu and tiny presets; the paper preset keeps the dense
  addressing of Sec. 3.3). With dense addressing the memory collapses: at the start every write key
  has a near-uniform softmax over the items, a batch's B x J x 2 writes erase every item and leave
  each the same weighted mean of the write vectors, and identical items can never be addressed
  apart again (the "mem" ablation then scores every pair alike). Top-1 writes (sparse access as in
  Rae et al. 2016, each write changes only its most similar item) keep the items apart
  (results/README.md, ACMM), at a price: the softmax over one item is 1, so the write keys and
  strengths get no gradient and act as fixed random projections that choose the item (the erase
  and write vectors still learn).
  ``tests/test_acmm.py`` shows both behaviours on the update alone.
- Reads (``unit_items``, ``read_strength_bias``; off in every preset, not in the paper): options
  against reads that are nearly uniform over the items, a read strength beta^r that stays near
  its initial oneplus(0) (``experiments/acmm_memory_terms.py``; what they do is measured in
  results/README.md, ACMM). ``unit_items`` rescales the items to unit length after every write
  step (and at initialisation); ``read_strength_bias`` initialises the bias of the read-strength
  outputs, so beta^r starts at oneplus(bias) (e.g. 10 -> ~11).
- Fast update (b), ``fast_update``: the writes are applied sequentially over word positions
  t = 1..J (2 J steps), each step vectorised over the batch's sentences: at position t the
  region-side writes of all B pairs are addressed against the current memory, then applied in
  pair order (``write``: ``M o prod_p k_p + sum_p w_p u_p o prod_{q>p} k_q``, k_p = 1 - w_p e_p, so a
  later write erases what an earlier one added), then the word-side writes likewise. Against the
  strictly sequential order (pair by pair, word by word, region then word, each write addressed
  after the previous one; ``strict_sequential_update`` in tests/test_acmm.py) this is EXACT for
  one pair (B = 1: every step holds one write), and exact for any B given the weights; what
  differs is that the B writes of a step are addressed against the same memory and the order is
  position-major. Scaling every erase and write vector by eps, the two results differ by O(eps^2)
  while the update itself is O(eps); with top-1 writes at full size the item norms stay those of
  the sequential update, where summing a step's writes (no erase between them) inflated them
  (``tests/test_acmm.py`` checks all three).

Beyond the paper (off unless a preset says; ``cpu-minilm`` turns all of them on), against a
memory term that was the same for every pair (results/README.md, ACMM):

- ``text_input="bert"``: the words are frozen MiniLM token states (``docs/substitutes.md``), the
  input the baseline and the other models read, instead of word vectors.
- ``enhanced_reads``: Sec. 3.4 calls the reads an enhancement of the generic representations and
  writes r_j in R^H: a read is mapped back to H by F (linear, W -> H) and added, so the memory
  term is ``cos(v_j + F r^V_j, s_j + F r^S_j)`` (for the "mem" ablation the pooled
  ``a_i + F r^V_i`` and ``s_j + F r^S_j``). Two convex mixtures of the same items compared raw
  cannot tell pairs apart when the reads are near-uniform.
- ``write_gate`` (the write gate g^w of the DNC that ACMM's memory follows): a sigmoid output of
  t^V / t^S scaling each write's weights, its logit's bias initialised to ``write_gate``, so the
  model can learn how much a write changes (a batch's ~B x J x 2 writes otherwise rewrite most of
  the memory every step). With top-1 writes the gate, erase and write vectors learn; the keys do not.
- ``write_split``: in training, the batch's two halves each read the memory the other half wrote
  (``_split_loss``): as at test time no pair reads its own writes, and the write heads still get
  gradients. ``read_after_write=False`` is the other cure, but leaves the write heads untrained.

Ablations (Table 1), constructor flags, and the score terms that remain:

| Table 1 row              | use_alignment | use_memory | shared_memory | relation | score                          |
|--------------------------|---------------|------------|---------------|----------|--------------------------------|
| align (w/o relation)     | True          | False      | -             | False    | mean_j cos(v_j, s_j)           |
| align                    | True          | False      | -             | True     | mean_j cos(v_j, s_j)           |
| mem (w/o shared)         | False         | True       | False         | True     | cos(mean_i r^V_i, mean_j r^S_j)|
| mem                      | False         | True       | True          | True     | cos(mean_i r^V_i, mean_j r^S_j)|
| align + mem (w/o shared) | True          | True       | False         | True     | Eq. 1                          |
| align + mem (ACMM)       | True          | True       | True          | True     | Eq. 1                          |

Without memory the score is the alignment term alone (no lam). Without alignment ("mem") there
is no word-aligned v_j: the region side's interface vectors come from the regions a_i themselves
(I writes per image, I reads), the word side's from s_j, and since reads of different counts
cannot be paired word by word the score is the cosine of the mean region read and the mean word
read (our reading of "process unaligned region and word representations"); the memory update
steps over positions t = 1..max(I, J), region t then word t.

Computation: the score of Eq. 1 is a mean over words of a function of (image, word), so
``similarity`` flattens the real words of its sentences (no padding) and scores every
(image, word) cell in batched passes of at most ``cell_chunk`` cells, then averages per sentence.
No (pairs, J, H) tensor is formed: ``P s`` is computed per word and ``Q a``, ``A W`` per image; the
logits and ``v_j . s_j = sum_i G_ji (A W)_i . s_j`` are two GEMMs of the words against all regions;
the norms ``|v_j|^2 = G_j (U U^T) G_j^T`` (U = A W), the V-side read key ``k_j = G_j K'`` (K' = the
read keys of the rows of U, as the rows of G sum to 1) with its norm, its products with the
normalised items and the read strength come from one product of G with per-image matrices; the read
``r^V = w M`` enters only through ``w . (M r^S)`` and ``w (M M^T) w^T``. ``tests/test_acmm.py`` checks
the result against a per-pair loop written directly from the paper's equations.
``embed`` (not part of the paper) gives a cheap global vector per item for a two-step first stage:
the l2-normalised mean of the aligned-space region vectors ``A W`` / of the word states ``s_j``; for
the "mem" ablation it is the mean read, whose dot product is then exactly the score.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xmr.interface import BERT_DIM, BERT_MAX_LEN
from xmr.losses import ViolationWarmup, triplet_ranking_loss
from xmr.models.base import Inputs, Preset, RetrievalModel, Reps, register
from xmr.models.text_encoders import GRUEncoder, drop_padding_columns, word_embedding

EPS = 1e-8

PRESETS = {
    # Sec. 4.2: E = 300 word vectors, H = 1024 (BiGRU), N = 128 memory items of W = 256, max 50
    # words, margin 0.2, SGD at lr 0.0005 with gradient clipping at 2, 30 epochs, batch 128.
    # The momentum is not stated; 0.9 (xmr's SGD default). lam = 0.5 (Sec. 3.4).
    "paper": Preset(
        model=dict(word_dim=300, hidden=1024, mem_items=128, mem_width=256, lam=0.5, margin=0.2),
        train=dict(epochs=30, batch_size=128, lr=5e-4, optimizer="sgd", momentum=0.9, grad_clip=2.0,
                   max_len=50, lr_decay_epochs=[]),
        note="Huang & Wang 2019, Sec. 4.2",
    ),
    # 2 CPU cores, Flickr8k (30k training pairs, 7 x 7 = 49 regions): H = 256, N = 64 items of
    # W = 128, Adam, one warm-up epoch of summed violations, top-1 writes (the dense ones collapse
    # the memory, module docstring); 32 words cover all but 0.02% of
    # Flickr8k captions (longest 38).
    "cpu": Preset(
        model=dict(word_dim=300, hidden=256, mem_items=64, mem_width=128, lam=0.5, margin=0.2, warmup_epochs=1,
                   write_topk=1),
        train=dict(epochs=12, batch_size=64, lr=2e-4, optimizer="adam", grad_clip=2.0, max_len=32,
                   lr_decay_epochs=[8], lr_decay=0.1, dev_images=500),
        note="small enough for 2 CPU cores; validates on the first 500 dev images",
    ),
    # The cpu preset on the inputs the other models share (MiniLM token states for the words; run
    # with --extractor efficientnet-lite2-260 for the regions), with the fixes against a memory
    # that did not contribute (module docstring, "Beyond the paper"): enhanced reads, a write gate
    # starting near 0.12, split writes.
    "cpu-minilm": Preset(
        model=dict(hidden=256, mem_items=64, mem_width=128, lam=0.5, margin=0.2, warmup_epochs=1,
                   write_topk=1, text_input="bert", enhanced_reads=True, write_gate=-2.0, write_split=True),
        train=dict(epochs=12, batch_size=64, lr=2e-4, optimizer="adam", grad_clip=2.0, max_len=32,
                   lr_decay_epochs=[8], lr_decay=0.1, dev_images=500),
        note="cpu preset with MiniLM words, enhanced reads, gated and split writes",
    ),
    "tiny": Preset(
        model=dict(word_dim=32, hidden=64, mem_items=16, mem_width=32, lam=0.5, margin=0.2, warmup_epochs=1,
                   write_topk=1),
        train=dict(epochs=4, batch_size=32, lr=1e-3, optimizer="adam", grad_clip=2.0, max_len=20,
                   lr_decay_epochs=[3], lr_decay=0.1),
        note="tests and the synthetic demo",
    ),
}


def oneplus(x: torch.Tensor) -> torch.Tensor:
    """oneplus(x) = 1 + log(1 + e^x) in [1, inf): the read / write strengths of Sec. 3.2."""
    return 1 + F.softplus(x)


def address(keys: torch.Tensor, memory: torch.Tensor, strength: torch.Tensor, topk: int = 0) -> torch.Tensor:
    """Content addressing theta(k, M_i, beta) of Sec. 3.3: softmax over items i of beta cos(k, M_i).

    keys (..., W), memory (N, W), strength (...) -> weights (..., N), each row summing to 1. A zero
    key or item has cosine 0 with everything. ``topk`` > 0 keeps each key's ``topk`` most similar
    items and renormalises the softmax over them (sparse addressing, Rae et al. 2016).
    """
    cos = F.normalize(keys, dim=-1, eps=EPS) @ F.normalize(memory, dim=-1, eps=EPS).T
    logits = strength[..., None] * cos
    if 0 < topk < memory.size(0):
        kth = logits.topk(topk, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, dim=-1)


@dataclass
class Heads:
    """One side's write interface vectors (Sec. 3.2) for P sequences of T writes each."""

    key: torch.Tensor  # (P, T, W) write key k^w
    strength: torch.Tensor  # (P, T) write strength beta^w >= 1
    erase: torch.Tensor  # (P, T, W) erase vector e in [0, 1]
    add: torch.Tensor  # (P, T, W) write vector u
    mask: torch.Tensor  # (P, T) bool; False = no write (a padding word)
    gate: torch.Tensor | None = None  # (P, T) write gate g^w in (0, 1) scaling the weights (DNC), or none


def write(memory: torch.Tensor, weights: torch.Tensor, erase: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """P writes of Sec. 3.3, ``M_i <- M_i o (1 - w_i e) + w_i u``, applied one after another in the
    order p = 1..P with the given weights: ``M o prod_p k_p + sum_p w_p u_p o prod_{q>p} k_q`` with
    ``k_p = 1 - w_p e_p``, so a later write erases what an earlier one added to the same item.
    memory (N, W), weights (P, N), erase / add (P, W). Exact against the writes in turn whenever the
    weights are those each write would address (always for P = 1)."""
    keep = 1 - weights[:, :, None] * erase[:, None, :]  # (P, N, W)
    from_p = torch.cumprod(keep.flip(0), 0).flip(0)  # prod_{q >= p} k_q
    after_p = torch.cat([from_p[1:], torch.ones_like(from_p[:1])])  # prod_{q > p} k_q
    return memory * from_p[0] + (weights[:, :, None] * add[:, None, :] * after_p).sum(0)


def fast_update(memory: torch.Tensor, region: Heads, word: Heads, topk: int = 0,
                unit_items: bool = False) -> torch.Tensor:
    """The batch's memory update (Sec. 3.3 update equations), sequential over positions only.

    memory (banks, N, W): bank 0 takes the region side's writes, bank -1 the word side's (the same
    bank when shared). For t = 1..max(T): the region writes at position t of all P sequences are
    addressed against the current memory and applied at once (``write``), then the word writes at t.
    Exact against the strictly sequential update (every write in turn) when P = 1; otherwise equal to first order in the
    erase / write vectors (see the module docstring). Differentiable in the heads and the memory.
    ``unit_items`` rescales the items to unit length after every write step (not in the paper).
    """
    banks = list(memory.unbind(0))
    for t in range(max(region.mask.size(1), word.mask.size(1))):
        for heads, b in ((region, 0), (word, len(banks) - 1)):
            if t >= heads.mask.size(1):
                continue
            live = heads.mask[:, t]
            if not bool(live.any()):
                continue
            w = address(heads.key[live, t], banks[b], heads.strength[live, t], topk)
            if heads.gate is not None:
                w = w * heads.gate[live, t, None]
            banks[b] = write(banks[b], w, heads.erase[live, t], heads.add[live, t])
            if unit_items:
                banks[b] = F.normalize(banks[b], dim=-1, eps=EPS)
    return torch.stack(banks)


class RegionGCN(nn.Module):
    """Relation among regions (Sec. 3.2): the appearance-similarity graph of Wang & Gupta [44],
    ``Graph_ij = softmax_j phi(x_i)^T phi'(x_j)``, and one graph convolution with a residual,
    ``A = X + ReLU(Graph X W_g)`` (the paper omits the formulas; this form is our choice)."""

    def __init__(self, dim: int):
        super().__init__()
        self.phi = nn.Linear(dim, dim, bias=False)
        self.phi2 = nn.Linear(dim, dim, bias=False)
        self.w_g = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, I, D) -> (N, I, D)."""
        graph = torch.softmax(self.phi(x) @ self.phi2(x).transpose(1, 2), dim=-1)
        return x + F.relu(self.w_g(graph @ x))


def _iw(img: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Products of every region with every word: img (n, I, C) with words (L, C) shared by all n
    images -> (n, I, L) in one GEMM, or with words (n, L, C) of n aligned pairs -> (n, I, L)."""
    n, i, c = img.shape
    if words.dim() == 2:
        return (img.reshape(n * i, c) @ words.T).view(n, i, -1)
    return img @ words.transpose(1, 2)


def _softmax_regions(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1 (the regions) of (n, I, L), written out (faster than torch's on CPU here)."""
    e = torch.exp(logits - logits.detach().amax(1, keepdim=True))
    return e / e.sum(1, keepdim=True)


@register("acmm", presets=PRESETS)
class ACMM(RetrievalModel):
    inputs = Inputs(image="regions", text=("tokens",))
    pairwise = True
    data_facts = ("vocab_size", "image_dim", "max_len")

    @classmethod
    def word_vector_dim(cls, word_dim: int = 300, **_) -> int:
        return word_dim

    @classmethod
    def inputs_for(cls, text_input: str = "words", **_) -> Inputs:
        if text_input not in ("words", "bert"):
            raise ValueError(f"text_input must be 'words' or 'bert', not {text_input!r}")
        return Inputs(image="regions", text=("tokens", "bert") if text_input == "bert" else ("tokens",))
    # 32 images x 1024 captions per similarity() call, scored in passes of cell_chunk (image, word) cells.
    score_block = (32, 1024)

    def __init__(self, vocab_size: int, image_dim: int, max_len: int = 50, word_dim: int = 300,
                 hidden: int = 1024, mem_items: int = 128, mem_width: int = 256, lam: float = 0.5,
                 margin: float = 0.2, relation: bool = True, use_alignment: bool = True,
                 use_memory: bool = True, shared_memory: bool = True, read_after_write: bool = True,
                 write_topk: int = 0, unit_items: bool = False, read_strength_bias: float | None = None,
                 warmup_epochs: int = 0, cell_chunk: int = 1 << 14, word_init: np.ndarray | None = None,
                 text_input: str = "words", enhanced_reads: bool = False, write_gate: float | None = None,
                 write_split: bool = False):
        """``hidden`` is H (word states, regions, aligned vectors), ``mem_items`` N, ``mem_width`` W,
        ``lam`` the lambda of Eq. 1; ``write_topk`` > 0 writes only to each write key's k most
        similar items (0: dense, the paper); ``unit_items`` keeps the items at unit length (rescaled
        after every write step) and ``read_strength_bias`` initialises the bias of the read-strength
        outputs of t^V and t^S (None: PyTorch's default, beta^r starts near oneplus(0) = 1.69); both
        are not in the paper (module docstring, "Reads"); ``max_len`` is the width texts are padded
        to (so encoded batches concatenate); the flags select the Table 1 ablations (module docstring); ``cell_chunk`` bounds
        the (image, word) cells per scoring pass (small passes stay in cache: ~1.7x faster than 2^17).
        Not in the paper (module docstring, "Beyond the paper"): ``text_input="bert"`` (words are
        frozen MiniLM token states), ``enhanced_reads``, ``write_gate`` (the initial bias of the
        gate's logit; None: no gate), ``write_split``."""
        super().__init__()
        if not (use_alignment or use_memory):
            raise ValueError("ACMM scores a pair through the alignment, the memory or both; both are off")
        self.max_len, self.hidden, self.mem_width = max_len, hidden, mem_width
        self.lam, self.margin = lam, margin
        self.warmup = ViolationWarmup(warmup_epochs)
        self.relation, self.use_alignment, self.use_memory = relation, use_alignment, use_memory
        self.shared_memory, self.read_after_write = shared_memory, read_after_write
        self.write_topk, self.unit_items = write_topk, unit_items
        self.inputs = self.inputs_for(text_input=text_input)
        self.text_input, self.enhanced_reads, self.write_split = text_input, enhanced_reads, write_split
        self.write_gate = write_gate is not None
        if text_input == "bert":  # MiniLM token states stand in for the word vectors
            vocab_size, word_dim, word_init, max_len = None, BERT_DIM, None, BERT_MAX_LEN
            self.max_len = max_len
        self.cell_chunk = max(1, int(cell_chunk))
        # Sec. 3.1 / 3.2: regions -> FC (-> GCN); words -> vectors -> BiGRU (or a linear map).
        self.image_fc = nn.Linear(image_dim, hidden)
        self.gcn = RegionGCN(hidden) if relation else None
        if relation:
            self.text = GRUEncoder(vocab_size, word_dim, hidden, bidirectional=True, word_init=word_init)
        else:
            self.word_emb = word_embedding(vocab_size, word_dim, word_init) if vocab_size else None
            self.word_fc = nn.Linear(word_dim, hidden)
        if use_alignment:  # Sec. 3.2: alpha(s) = P s, phi(a) = Q a, V = G A W
            self.align_p = nn.Linear(hidden, hidden, bias=False)
            self.align_q = nn.Linear(hidden, hidden, bias=False)
            self.align_w = nn.Linear(hidden, hidden, bias=False)
        if use_memory:  # t^V, t^S -> {k^r, beta^r, k^w, beta^w, e, u}; the memory items
            outputs = 4 * mem_width + 2 + self.write_gate  # the gate's logit last
            self.iface_v = nn.Linear(hidden, outputs)
            self.iface_s = nn.Linear(hidden, outputs)
            with torch.no_grad():
                for layer in (self.iface_v, self.iface_s):
                    if read_strength_bias is not None:  # output W is the read strength (``_read_logits``)
                        layer.bias[mem_width] = read_strength_bias
                    if self.write_gate:
                        layer.bias[-1] = write_gate
            # F: a read (W) mapped back to the model width H, added to v_j / s_j
            self.read_out = nn.Linear(mem_width, hidden, bias=False) if enhanced_reads else None
            banks = 1 if shared_memory else 2
            memory = torch.randn(banks, mem_items, mem_width) / mem_width ** 0.5
            self.register_buffer("memory", F.normalize(memory, dim=-1) if unit_items else memory)

    # ------------------------------------------------------------------ per item
    def encode_images(self, batch: dict) -> Reps:
        """Regions A (Sec. 3.1-3.2: FC, then the GCN) and, for the alignment, Q A, U = A W and the
        memory-independent matrices of ``_image_fixed``."""
        a = self.image_fc(batch["image"].float())
        if self.gcn is not None:
            a = self.gcn(a)
        reps = {"regions": a}
        if self.use_alignment:
            reps["phi"], reps["u"] = self.align_q(a), self.align_w(a)
            reps.update(self._image_fixed(reps["u"]))
        return reps

    def encode_texts(self, batch: dict) -> Reps:
        """Word states S (Sec. 3.2: BiGRU over the word vectors, or their linear map) zeroed at
        padding, the mask, and P S for the alignment; padded to ``max_len`` words."""
        if self.text_input == "bert":
            x, lengths = batch["bert"].float(), batch["bert_mask"].sum(1)
        else:
            x, lengths = batch["tokens"], batch["lengths"].to(batch["tokens"].device)
        mask = torch.arange(x.size(1), device=x.device)[None] < lengths[:, None]
        if self.relation:
            s, _ = self.text(x, lengths) if self.text_input == "words" else self.text.run(x, lengths)
        else:
            s = self.word_fc(self.word_emb(x) if self.text_input == "words" else x)
        s = s * mask[..., None]
        pad = max(0, self.max_len - s.size(1))
        reps = {"words": F.pad(s, (0, 0, 0, pad)), "mask": F.pad(mask, (0, pad))}
        if self.use_alignment:
            reps["alpha"] = self.align_p(reps["words"])  # no bias: zero at padding
        return reps

    def embed(self, reps: Reps) -> torch.Tensor | None:
        """A global vector per item for a first stage (not in the paper): l2(mean_i (A W)_i) /
        l2(mean_j s_j); for the "mem" ablation the l2-normalised mean read (then exactly the score)."""
        if not self.use_alignment:
            return self._pooled_read(reps, self.memory)
        if "u" in reps:
            return F.normalize(reps["u"].mean(1), dim=-1)
        m = reps["mask"][..., None].to(reps["words"].dtype)
        return F.normalize((reps["words"] * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)

    # ------------------------------------------------------------------ interface and memory
    def _read_logits(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """The read key and (pre-oneplus) read strength of t^V / t^S: the first W + 1 outputs."""
        w = self.mem_width
        return F.linear(x, layer.weight[: w + 1], layer.bias[: w + 1])

    def _heads(self, layer: nn.Linear, x: torch.Tensor, mask: torch.Tensor) -> Heads:
        """The write interface vectors of Sec. 3.2 (k^w, oneplus beta^w, sigmoid e, u) of x (P, T, H)."""
        w = self.mem_width
        out = layer(x)
        _, _, key, strength, erase, add = out[..., : 4 * w + 2].split([w, 1, w, 1, w, w], dim=-1)
        gate = torch.sigmoid(out[..., -1]) if self.write_gate else None
        return Heads(key, oneplus(strength.squeeze(-1)), torch.sigmoid(erase), add, mask, gate)

    def _pooled_read(self, reps: Reps, memory: torch.Tensor) -> torch.Tensor:
        """"mem" ablation: l2 of the mean read r = sum_i w_i M_i (Sec. 3.3) over an image's regions
        (keys from t^V(a_i)) or a sentence's words (keys from t^S(s_j))."""
        if "regions" in reps:
            x, layer, bank = reps["regions"], self.iface_v, memory[0]
            m = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
        else:
            x, layer, bank = reps["words"], self.iface_s, memory[-1]
            m = reps["mask"].to(x.dtype)
        kb = self._read_logits(layer, x)
        reads = address(kb[..., :-1], bank, oneplus(kb[..., -1])) @ bank
        if self.read_out is not None:
            reads = x + self.read_out(reads)
        return F.normalize((reads * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1), dim=-1)

    def _controller_inputs(self, img: Reps, txt: Reps) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What t^V and t^S see for the aligned pairs (image p, sentence p): the aligned vectors v_j
        (with the alignment; the regions a_i for the "mem" ablation) and the word states s_j, each
        with its mask: (xv, mask_v, xs, mask_s)."""
        txt = drop_padding_columns(txt)
        mask = txt["mask"]
        if self.use_alignment:
            g = _softmax_regions(_iw(img["phi"], txt["alpha"]))  # (P, I, T)
            return g.transpose(1, 2) @ img["u"], mask, txt["words"], mask  # v = G A W
        a = img["regions"]
        return a, torch.ones(a.shape[:2], dtype=torch.bool, device=a.device), txt["words"], mask

    def write_heads(self, img: Reps, txt: Reps) -> tuple[Heads, Heads]:
        """Write interface vectors of the aligned pairs: region side from t^V(v_j) (t^V(a_i) for
        the "mem" ablation), word side from t^S(s_j)."""
        xv, mask_v, xs, mask_s = self._controller_inputs(img, txt)
        return self._heads(self.iface_v, xv, mask_v), self._heads(self.iface_s, xs, mask_s)

    def read_weights(self, img: Reps, txt: Reps) -> dict[str, torch.Tensor]:
        """Read weights w^Vr, w^Sr (Sec. 3.3) and read strengths beta^r of the aligned pairs against
        the current (frozen) memory, for diagnostics: ``region`` / ``word`` (P, T, N), their
        ``*_strength`` (P, T) and ``*_mask``."""
        xv, mask_v, xs, mask_s = self._controller_inputs(img, txt)
        out = {}
        for side, layer, x, mask, bank in (("region", self.iface_v, xv, mask_v, self.memory[0]),
                                           ("word", self.iface_s, xs, mask_s, self.memory[-1])):
            kb = self._read_logits(layer, x)
            strength = oneplus(kb[..., -1])
            out.update({side: address(kb[..., :-1], bank, strength), f"{side}_strength": strength,
                        f"{side}_mask": mask})
        return out

    def write_weights(self, img: Reps, txt: Reps) -> dict[str, torch.Tensor]:
        """Write weights w^Vw, w^Sw (Sec. 3.3) of the aligned pairs against the current (frozen)
        memory, for Figure 3: ``region`` (P, Tv, N), ``word`` (P, Ts, N) and their masks. With the
        alignment Tv = Ts = the words (w^Vw_j and w^Sw_j belong to the same word); for the "mem"
        ablation Tv is the regions."""
        region, word = self.write_heads(img, txt)
        k = self.write_topk
        return {"region": address(region.key, self.memory[0], region.strength, k), "region_mask": region.mask,
                "word": address(word.key, self.memory[-1], word.strength, k), "word_mask": word.mask}

    def update_memory(self, img: Reps, txt: Reps, memory: torch.Tensor) -> torch.Tensor:
        """The memory after this batch's writes (``fast_update``), from the pairs (image p, sentence p)."""
        return fast_update(memory, *self.write_heads(img, txt), self.write_topk, self.unit_items)

    # ------------------------------------------------------------------ per pair
    def _image_fixed(self, u: torch.Tensor) -> Reps:
        """Per-image parts of the (image, word) cells that do not depend on the memory: ``gram`` =
        U U^T (for |v_j|) and, with the memory, K' K'^T (for |k^Vr_j|), concatenated; ``rkey`` = K'
        and the read-strength logits of the rows of U, K' being t^V's read keys (Sec. 3.2)."""
        if not self.use_memory:
            return {"gram": u @ u.transpose(1, 2)}
        kb = self._read_logits(self.iface_v, u)
        key = kb[..., :-1]
        return {"gram": torch.cat([u @ u.transpose(1, 2), key @ key.transpose(1, 2)], -1), "rkey": kb}

    def _image_side(self, img: Reps, memory: torch.Tensor | None) -> Reps:
        """The per-image matrix ``side`` the (image, word) cells multiply G with: ``gram`` and, with
        the memory, K' normalise(M^V)^T (for k^Vr_j . M_i / |M_i|) and the read-strength logits."""
        side, out = img["gram"], {"phi": img["phi"], "u": img["u"]}
        if memory is not None:
            kb, bank = img["rkey"], memory[0]
            parts = [side, kb[..., :-1] @ F.normalize(bank, dim=-1, eps=EPS).T]
            if self.read_out is not None:  # U F M^T (for v_j . F r^V_j) and (F M)(F M)^T (for |F r^V_j|)
                parts.append(img["u"] @ self.read_out.weight @ bank.T)
                fm = self.read_out(bank)
                out["fmfm"] = fm @ fm.T
            side = torch.cat(parts + [kb[..., -1:]], -1)
        out["side"] = side
        return out

    def _word_side(self, s: torch.Tensor, alpha: torch.Tensor, memory: torch.Tensor | None) -> Reps:
        """Per-word parts (words (L, H) or (P, T, H)): the word-side read r^S_j (Sec. 3.3) enters as
        M^V r^S_j and |r^S_j|."""
        parts = {"s": s, "alpha": alpha, "s_norm": s.norm(dim=-1)}
        if memory is not None:
            kb = self._read_logits(self.iface_s, s)
            r_s = address(kb[..., :-1], memory[-1], oneplus(kb[..., -1])) @ memory[-1]
            if self.read_out is None:
                parts["r_s_norm"], parts["m_r_s"] = r_s.norm(dim=-1), r_s @ memory[0].T
            else:  # the enhanced word s_j + F r^S_j enters through its products with v_j and F r^V_j
                f_r_s = self.read_out(r_s)
                weight = self.read_out.weight
                parts.update(f_r_s=f_r_s, s_plus_norm=(s + f_r_s).norm(dim=-1),
                             m_s=(s @ weight) @ memory[0].T, m_f_r_s=(f_r_s @ weight) @ memory[0].T)
        return parts

    def _cells(self, im: Reps, wd: Reps, memory: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The two terms of Eq. 1 per (image, word) cell, before the mean over words: cos(r^V_j,
        r^S_j) (None without memory) and cos(v_j, s_j), each (n, L), for n images against words
        (L, .) shared by all of them, or n aligned pairs' words (n, L, .).

        G = softmax_i (P s_j)^T (Q a_i) and v_j = G_j U (Sec. 3.2) are never formed as vectors:
        v_j . s_j = sum_i G_ji (U_i . s_j), |v_j|^2 = G_j (U U^T) G_j^T; the read key is G_j K' with
        norm^2 G_j (K' K'^T) G_j^T, the read weights softmax_N(beta cos(k, M_i)) (Sec. 3.3), and
        r^V . r^S = w . (M^V r^S), |r^V|^2 = w (M^V M^V^T) w^T.
        """
        n_reg = im["u"].size(1)
        g = _softmax_regions(_iw(im["phi"], wd["alpha"]))  # (n, I, L)
        vs = (g * _iw(im["u"], wd["s"])).sum(1)  # v_j . s_j
        gt = g.transpose(1, 2)  # (n, L, I)
        t = gt @ im["side"]  # (n, L, C)
        vv = (t[..., :n_reg] * gt).sum(-1)
        align = vs / (vv.clamp(min=EPS ** 2).sqrt() * wd["s_norm"].clamp(min=EPS))
        if memory is None:
            return None, align
        n_mem = memory.size(1)
        kk = (t[..., n_reg: 2 * n_reg] * gt).sum(-1)
        cos_km = t[..., 2 * n_reg: 2 * n_reg + n_mem] / kk.clamp(min=EPS ** 2).sqrt()[..., None]
        w = torch.softmax(oneplus(t[..., -1])[..., None] * cos_km, dim=-1)  # w^Vr (n, L, N)
        if self.read_out is None:  # cos(r^V_j, r^S_j)
            bank = memory[0]
            rv_rs = (w * wd["m_r_s"]).sum(-1)
            rv2 = ((w @ (bank @ bank.T)) * w).sum(-1)
            return rv_rs / (rv2.clamp(min=EPS ** 2).sqrt() * wd["r_s_norm"].clamp(min=EPS)), align
        # cos(v_j + F r^V_j, s_j + F r^S_j), r^V_j = w M^V
        dot = (vs + (g * _iw(im["u"], wd["f_r_s"])).sum(1)  # v.s + v.F r^S
               + (w * (wd["m_s"] + wd["m_f_r_s"])).sum(-1))  # F r^V.s + F r^V.F r^S
        v_frv = (w * t[..., 2 * n_reg + n_mem: -1]).sum(-1)  # v . F r^V
        vv_plus = vv + 2 * v_frv + ((w @ im["fmfm"]) * w).sum(-1)
        mem = dot / (vv_plus.clamp(min=EPS ** 2).sqrt() * wd["s_plus_norm"].clamp(min=EPS))
        return mem, align

    def score_terms(self, img: Reps, txt: Reps, memory: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The memory term mean_j cos(r^V_j, r^S_j) and the alignment term mean_j cos(v_j, s_j) of
        Eq. 1 for every pair, (Ni, Nt) each, None where the model lacks the term; ``memory``
        defaults to the stored one. Words are flattened (padding dropped) and scored against all
        images in passes of at most ``cell_chunk`` (image, word) cells."""
        if self.use_memory and memory is None:
            memory = self.memory
        if not self.use_alignment:
            return self._pooled_read(img, memory) @ self._pooled_read(txt, memory).T, None
        mask = txt["mask"]
        lengths = mask.sum(1).clamp(min=1)
        sent = mask.nonzero()[:, 0]  # the sentence of each real word, in order
        weight = 1.0 / lengths[sent].to(txt["words"].dtype)
        wd = self._word_side(txt["words"][mask], txt["alpha"][mask], memory)
        im = self._image_side(img, memory)
        ni, nt = img["u"].size(0), mask.size(0)
        mem_out = torch.zeros(ni, nt, dtype=weight.dtype, device=weight.device) if memory is not None else None
        align_out = torch.zeros(ni, nt, dtype=weight.dtype, device=weight.device)
        step = max(1, self.cell_chunk // max(1, ni))
        for s in range(0, len(sent), step):
            mem, align = self._cells(im, {k: v[s: s + step] for k, v in wd.items()}, memory)
            idx, wt = sent[s: s + step], weight[s: s + step]
            align_out = align_out.index_add(1, idx, align * wt)
            if mem is not None:
                mem_out = mem_out.index_add(1, idx, mem * wt)
        return mem_out, align_out

    def combine(self, mem: torch.Tensor | None, align: torch.Tensor | None, lam: float | None = None) -> torch.Tensor:
        """Eq. 1: mem + lam align with both terms; the one present term otherwise."""
        if mem is None:
            return align
        if align is None:
            return mem
        return mem + (self.lam if lam is None else lam) * align

    def similarity(self, img: Reps, txt: Reps) -> torch.Tensor:
        """Eq. 1 for every pair: (Ni, Nt), reading the frozen memory."""
        return self.combine(*self.score_terms(img, txt))

    def pair_similarity(self, img: Reps, txt: Reps) -> torch.Tensor:
        """Eq. 1 for the aligned pairs (image p, sentence p): (P,), in passes of ``cell_chunk`` cells."""
        memory = self.memory if self.use_memory else None
        if not self.use_alignment:
            return (self._pooled_read(img, memory) * self._pooled_read(txt, memory)).sum(-1)
        txt = drop_padding_columns(txt)
        mask = txt["mask"].to(txt["words"].dtype)
        lengths = mask.sum(1).clamp(min=1)
        step = max(1, self.cell_chunk // mask.size(1))
        out = []
        for s in range(0, mask.size(0), step):
            sl = slice(s, s + step)
            wd = self._word_side(txt["words"][sl], txt["alpha"][sl], memory)
            mem, align = self._cells(self._image_side({k: v[sl] for k, v in img.items()}, memory), wd, memory)
            mean = lambda x: (x * mask[sl]).sum(1) / lengths[sl]  # noqa: E731
            out.append(self.combine(None if mem is None else mean(mem), mean(align)))
        return torch.cat(out)

    # ------------------------------------------------------------------ training
    def loss(self, img: Reps, txt: Reps, batch: dict) -> dict:
        """Sec. 3.4 ranking loss (hardest negatives, margin m) on the B x B scores of Eq. 1.

        In training mode with gradients the memory is updated from the batch's matching pairs
        (``fast_update``); the pairs read the updated memory (``read_after_write``, gradients reach
        the write heads) or the one before, and the update is stored detached. ``memory_change``
        (logged as ``train_memory_change``) is |M1 - M0| / |M0|, how much one batch rewrote.
        """
        memory = self.memory.detach().clone() if self.use_memory else None
        update = self.use_memory and self.training and torch.is_grad_enabled()
        positives = batch.get("same_image")
        n = img["regions"].size(0)
        if update and self.write_split and n >= 4:
            return self._split_loss(img, txt, positives, memory)
        new = None
        if update:
            new = self.update_memory(img, txt, memory)
            if self.read_after_write:
                memory = new
        scores = self.combine(*self.score_terms(img, txt, memory))
        out = {"loss": triplet_ranking_loss(scores, self.margin, self.warmup.max_violation, positives)}
        if new is not None:
            out["memory_change"] = self._store(new)
        return out

    def _split_loss(self, img: Reps, txt: Reps, positives: torch.Tensor | None, memory: torch.Tensor) -> dict:
        """``write_split``: the batch's two halves each read the memory the other half wrote, so no
        pair reads its own writes (as at test time, where the memory holds none of the test pairs)
        while the write heads still get gradients; the ranking loss is summed over the two halves'
        score blocks, and both halves' writes are stored, the first half's first."""
        n = img["regions"].size(0)
        halves = (slice(0, n // 2), slice(n // 2, n))  # views: no copy, no scatter in backward
        part = lambda reps, rows: {k: v[rows] for k, v in reps.items()}  # noqa: E731
        heads = [self.write_heads(part(img, h), part(txt, h)) for h in halves]
        written = [fast_update(memory, *hd, self.write_topk, self.unit_items) for hd in heads]
        loss = 0
        for h, other in zip(halves, reversed(written)):
            scores = self.combine(*self.score_terms(part(img, h), part(txt, h), other))
            pos = None if positives is None else positives[h][:, h]
            loss = loss + triplet_ranking_loss(scores, self.margin, self.warmup.max_violation, pos)
        with torch.no_grad():  # the second half's heads again, now on top of the first half's writes
            new = fast_update(written[0], *heads[1], self.write_topk, self.unit_items)
        return {"loss": loss, "memory_change": self._store(new)}

    @torch.no_grad()
    def _store(self, new: torch.Tensor) -> torch.Tensor:
        """Keep ``new`` (detached) as the memory; returns |M1 - M0| / |M0|, how much one batch rewrote."""
        change = (new - self.memory).norm() / self.memory.norm().clamp(min=EPS)
        self.memory.copy_(new)
        return change

    def on_epoch_start(self, epoch: int) -> None:
        """Hardest negatives from epoch ``warmup_epochs`` on (sum of violations before)."""
        self.warmup.on_epoch_start(epoch)


def ensemble_similarity(model: ACMM, img: Reps, txt: Reps, lambdas: tuple[float, ...] = (0.5, 0.8)) -> torch.Tensor:
    """ACMM* (Sec. 4.5): the mean of the score matrices of one trained model at each lam in ``lambdas``."""
    mem, align = model.score_terms(img, txt)
    return torch.stack([model.combine(mem, align, lam) for lam in lambdas]).mean(0)
