"""Few-shot (k-shot) image-sentence matching, ACMM (ICCV 2019) Sec. 4.4, for every model.

The protocol. The k-shot test set is the test pairs (image, sentence) whose sentence contains at
least one content word whose frequency in the *training* split is <= k (k = 0: a word the model
never saw in training). Training is unchanged; only the test set differs. For each k the table
reports the subset's size and all recalls on it. ACMM's text says k in {0, 5, 10}, its Table 2
lists k = 0, 1, 5; ``DEFAULT_KS`` follows the table and any k can be asked for.

Content words. ACMM counts nouns, verbs and adjectives. No part-of-speech tagger is available
offline here (nltk / spaCy and their tagger data are not installed and nothing is downloaded), so
a content word is approximated as a token of ``xmr.data.text.tokenize`` that

- is alphabetic after a trailing English clitic is cut off ("dog's" -> "dog"; digits, "2nd" etc.
  are dropped),
- has at least 2 letters, and
- is not in ``FUNCTION_WORDS``, a closed-class list kept below: determiners, pronouns,
  prepositions and particles, conjunctions, auxiliary and modal verbs (with their negative
  contractions), numerals and quantifiers, and common adverbs / wh-words ("very", "not",
  "there", "also", "where"...).

What remains is the open classes, i.e. nouns, verbs and adjectives, plus the adverbs the list
does not name (e.g. "quickly"), which slip through. Frequencies are token counts of the content
words over all training captions (``word_frequencies``); a test caption's rarest content word
decides which subsets it joins, so the subsets are nested (k=0 within k=1 within k=5).

Recalls on a subset. Every rank comes from the whole test split (all its images and all its
captions): the subset restricts the queries, never the gallery. ACMM's own numbers support this:
its baselines score *lower* on the k-shot sets (e.g. VSE++ on COCO 5K, text->image R@1 30.3 in
total, 22.9 on the 0-shot set of 516), which a gallery shrunk to a few hundred items could not give.

- text->image: the queries are the subset's sentences, each ranked against all test images; this
  is exactly the exhaustive evaluation's per-caption rank (``result["ranks"]["t2i"]``), no rescoring.
- image->text (``"i2t"``): one query per subset *pair*: its image, whose ground truth is that
  pair's rare sentence, ranked among all test sentences. The image's other ground-truth captions
  are correct answers, so they are not counted above it (the rank is the number of captions of
  *other* images scoring >= the pair's score; pessimistic ties as in ``xmr.eval.recall``). This
  tests the rare sentence itself; the standard image->text rank (best of the image's five
  captions) would let an image be credited for its easy, common-word captions. It needs the
  subset images' scores against all captions, recomputed with the model (``pair_i2t_ranks``,
  in image blocks, the model's ``score_block``).
- ``"i2t_image"`` (extra, free): the standard image->text rank (best of all its ground-truth
  captions) of each distinct image in the subset, straight from the exhaustive evaluation.

``rsum`` / ``mR`` sum / average the six recalls of ``i2t`` (pair) and ``t2i``. Sizes: ``n`` is the
number of pairs (= sentences = text->image and image->text queries), ``n_images`` the distinct
images, ``n_words`` the distinct rare content words (freq <= k) in the subset's sentences, which is
what ACMM's Table 2 calls N. An empty subset gets ``None`` metrics. The evaluation is of the whole
split (not COCO 1K folds).
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np
import torch

from xmr.data.text import tokenize
from xmr.eval.recall import RECALL_KS, finite_or_last, recall_summary

DEFAULT_KS = (0, 1, 5)

FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every either neither no all both half another other
such what which whatever whichever
i me my mine myself you your yours yourself yourselves he him his himself she her hers herself
it its itself we us our ours ourselves they them their theirs themselves one ones oneself
who whom whose someone somebody something anyone anybody anything everyone everybody everything
nobody nothing none
about above across after against along alongside amid among amongst around as at atop before behind
below beneath beside besides between beyond by despite down during except for from in inside into
like near nearby next of off on onto opposite out outside over past per since than through
throughout till to toward towards under underneath unlike until up upon via with within without
away back together apart ahead
and or but nor so yet if because although though while whereas whether unless once whilst
be am is are was were been being
do does did done doing have has had having
can could may might must shall should will would ought
isn't aren't wasn't weren't don't doesn't didn't haven't hasn't hadn't can't cannot couldn't
won't wouldn't shouldn't mustn't mightn't
zero two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
sixteen seventeen eighteen nineteen twenty thirty forty fifty hundred thousand million
first second third several many much more most few fewer less least lots plenty
very not too also just only even still then now here there where when why how really quite rather
almost nearly ever never always often sometimes usually again already perhaps maybe else
instead otherwise however therefore thus somewhat
oh yes ok okay etc
""".split())

_CLITIC = ("'s", "'re", "'ll", "'ve", "'d", "'m")  # unlisted "n't" forms stay non-alphabetic


def content_words(caption: str) -> list[str]:
    """The caption's content words in order (repeats kept): see the module docstring."""
    out = []
    for tok in tokenize(caption):
        if tok in FUNCTION_WORDS:
            continue
        for clitic in _CLITIC:
            if tok.endswith(clitic):
                tok = tok[: -len(clitic)]
                break
        if len(tok) >= 2 and tok.isalpha() and tok not in FUNCTION_WORDS:
            out.append(tok)
    return out


def word_frequencies(train_captions: Iterable[str]) -> Counter:
    """How often each content word occurs in the training captions (token counts)."""
    return Counter(w for c in train_captions for w in content_words(c))


def _rarest(test_captions: list[str], freq: Counter) -> tuple[np.ndarray, dict[str, int]]:
    """Each caption's lowest training frequency over its content words (inf: none), and the
    training frequency of every content word of the test captions."""
    words = [set(content_words(c)) for c in test_captions]
    vocab = {w: freq.get(w, 0) for ws in words for w in ws}
    rarest = np.array([min((vocab[w] for w in ws), default=np.inf) for ws in words], dtype=np.float64)
    return rarest, vocab


def kshot_subsets(test_captions: list[str], freq: Counter, ks: Iterable[int] = DEFAULT_KS) -> dict[int, np.ndarray]:
    """k -> sorted indices of the test captions with a content word of training frequency <= k."""
    rarest, _ = _rarest(list(test_captions), freq)
    return {int(k): np.flatnonzero(rarest <= k) for k in ks}


def rare_words(test_captions: list[str], freq: Counter, ks: Iterable[int] = DEFAULT_KS) -> dict[int, list[str]]:
    """k -> the distinct content words of the test captions with training frequency <= k."""
    _, vocab = _rarest(list(test_captions), freq)
    return {int(k): sorted(w for w, n in vocab.items() if n <= k) for k in ks}


def pair_ranks(scores: torch.Tensor, caption_image: torch.Tensor, captions: torch.Tensor,
               images: torch.Tensor) -> torch.Tensor:
    """0-based rank of caption ``captions[p]`` for image ``images[p]``, given that image's scores
    ``scores[p]`` (P, Nt) against all captions: how many captions of other images score >= it."""
    scores = finite_or_last(scores)  # a non-finite score ranks last (xmr.eval.recall)
    gt = scores[torch.arange(scores.size(0)), captions]
    other = caption_image.view(1, -1) != images.view(-1, 1)
    return ((scores >= gt.view(-1, 1)) & other).sum(1)


@torch.no_grad()
def pair_i2t_ranks(model, data, captions: np.ndarray, reps=None, image_chunk: int | None = None,
                   caption_chunk: int | None = None) -> np.ndarray:
    """Image->text pair ranks of ``captions`` (aligned with it), scoring only their images against
    all captions of ``data``, in blocks of ``image_chunk`` images. ``reps``: (images, captions)
    from ``xmr.eval.evaluate.encode`` if already at hand."""
    from xmr.eval.evaluate import encode, score_rows, take

    model.eval()
    image_chunk = image_chunk or model.score_block[0]
    caption_chunk = caption_chunk or model.score_block[1]
    captions = np.asarray(captions, dtype=np.int64)
    img, txt = reps if reps is not None else encode(model, data)
    cap_img = torch.as_tensor(data.caption_image, dtype=torch.long)
    pair_img = data.caption_image[captions]
    images = np.unique(pair_img)
    out = np.empty(len(captions), dtype=np.int64)
    for s in range(0, len(images), image_chunk):
        block_images = images[s: s + image_chunk]
        block = score_rows(model, take(img, torch.as_tensor(block_images)), txt, caption_chunk)
        p = np.flatnonzero((pair_img >= block_images[0]) & (pair_img <= block_images[-1]))
        rows = torch.as_tensor(np.searchsorted(block_images, pair_img[p]))
        out[p] = pair_ranks(block[rows], cap_img, torch.as_tensor(captions[p]),
                            torch.as_tensor(pair_img[p])).numpy()
    return out


def _summary(ranks: np.ndarray) -> dict | None:
    return recall_summary(ranks) if len(ranks) else None


def kshot_results(ranks: dict, caption_image: np.ndarray, subsets: dict[int, np.ndarray],
                  pair_i2t: np.ndarray | None = None, words: dict[int, list[str]] | None = None) -> dict[int, dict]:
    """Recalls on each k-shot subset from per-query ranks of the whole split.

    ``ranks``: an ``evaluate`` result (its ``"ranks"``) or ``{"i2t": (Ni,), "t2i": (Nt,)}``;
    ``pair_i2t``: (Nt,) image->text pair ranks (only the subsets' entries are read; without it
    ``i2t``, ``rsum`` and ``mR`` are None); ``words``: ``rare_words`` output, for ``n_words``.
    """
    ranks = ranks.get("ranks", ranks)
    t2i, i2t_image = np.asarray(ranks["t2i"]), np.asarray(ranks["i2t"])
    caption_image = np.asarray(caption_image)
    if len(t2i) != len(caption_image):
        raise ValueError(f"{len(t2i)} text->image ranks for {len(caption_image)} captions")
    table = {}
    for k, idx in subsets.items():
        idx = np.asarray(idx, dtype=np.int64)
        images = np.unique(caption_image[idx])
        row = {"k": int(k), "n": int(len(idx)), "n_images": int(len(images)),
               "n_words": None if words is None else len(words[k]),
               "t2i": _summary(t2i[idx]),
               "i2t": None if pair_i2t is None else _summary(np.asarray(pair_i2t)[idx]),
               "i2t_image": _summary(i2t_image[images])}
        if row["i2t"] is not None and row["t2i"] is not None:
            recalls = [row[d][f"r{r}"] for d in ("i2t", "t2i") for r in RECALL_KS]
            row["rsum"], row["mR"] = float(sum(recalls)), float(np.mean(recalls))
        else:
            row["rsum"] = row["mR"] = None
        row["captions"] = idx.tolist()
        table[int(k)] = row
    return table


def kshot_evaluate(model, data, train_captions: list[str], ks: Iterable[int] = DEFAULT_KS,
                   result: dict | None = None, reps=None) -> dict[int, dict]:
    """The k-shot table of a model on ``data`` (a whole split); ``result``: its exhaustive
    ``evaluate`` result (computed here if not given); ``reps``: (images, captions) from
    ``xmr.eval.evaluate.encode`` if already at hand (else the split is encoded again)."""
    from xmr.eval.evaluate import evaluate

    if result is None:
        result = evaluate(model, data)
    if "ranks" not in result:
        raise ValueError("k-shot needs per-query ranks of the whole split (evaluate with folds=1)")
    captions = data.split.captions
    if len(captions) != data.n_captions:
        raise ValueError(f"{len(captions)} caption texts for {data.n_captions} evaluated captions")
    freq = word_frequencies(train_captions)
    ks = sorted({int(k) for k in ks})
    subsets = kshot_subsets(captions, freq, ks)
    union = np.unique(np.concatenate([subsets[k] for k in ks]))
    pair = np.full(data.n_captions, -1, dtype=np.int64)
    if len(union):
        pair[union] = pair_i2t_ranks(model, data, union, reps=reps)
    return kshot_results(result, data.caption_image, subsets, pair, rare_words(captions, freq, ks))


def format_kshot(table: dict) -> str:
    """One line per k: sizes, R@1/5/10 both ways (image->text per pair), mR."""
    head = (f"{'k-shot':>6s}{'N pairs':>9s}{'images':>8s}{'words':>7s}   "
            f"{'i->t R@1':>8s}{'R@5':>6s}{'R@10':>6s}   {'t->i R@1':>8s}{'R@5':>6s}{'R@10':>6s}{'mR':>7s}")
    lines = [head]
    for k in sorted(table, key=int):
        row = table[k]
        words = "-" if row.get("n_words") is None else str(row["n_words"])

        def rec(d):
            s = row.get(d)
            return "".join(f"{'-' if s is None else format(s[f'r{r}'], '.1f'):>{w}s}"
                           for r, w in zip(RECALL_KS, (8, 6, 6)))

        mr = "-" if row.get("mR") is None else f"{row['mR']:.1f}"
        lines.append(f"{row['k']:>6d}{row['n']:>9d}{row['n_images']:>8d}{words:>7s}   {rec('i2t')}   "
                     f"{rec('t2i')}{mr:>7s}")
    return "\n".join(lines)
