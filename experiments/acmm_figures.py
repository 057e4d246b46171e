"""ACMM figures (Huang & Wang 2019) from trained runs, on the test pairs of the run's data.

    .venv/bin/python experiments/acmm_figures.py RUN OUT_DIR --unaligned MEM_RUN [--aligned RUN2]

Figure 3 (``acmm_write_weights.png``): histograms of the cosine similarity between cross-modal
write-weight vectors (w^Vw, w^Sw of Sec. 3.3, ``ACMM.write_weights``) over the matched test pairs
(each caption with its own image), against the memory each run stores at the end of training.
- aligned memory (``--aligned``, default RUN; alignment and memory on): the region-side write
  weights of word j (from its aligned visual vector v_j) against the word-side write weights of the
  same word j, one cosine per real word;
- unaligned memory (``--unaligned``: the "mem" ablation, no alignment): there is no word-aligned
  visual vector, the region side writes once per region, so every (region i, word j) pair of a
  matched pair gives a cosine (I x J per pair). The JSON also gives, as a second reading, each
  word's write weights against the mean of its image's region write weights.
For a like-for-like comparison pass runs trained on the same budget (the script does: the
reduced-budget "align + mem" and "mem" ablations).

Figure 4 (``acmm_memory_pca.png``): the learned memory items of RUN (the bank the word side writes
to; with shared memory the only bank) projected on their first two principal components (numpy
SVD of the centred items). Rare words are the test content words with training frequency <= 5
(``xmr.eval.kshot.rare_words``; the paper's few-shot content); for each, its word-side write
weights are averaged over its occurrences in the test captions and the item with the highest
average weight is its item. Those items are marked (red, size by how many rare words chose them)
and a few are annotated with their words (most frequent in the test captions first).

Also writes ``acmm_figures.json``: the histogram statistics (mean / median / std cosine, aligned vs
unaligned) and the Figure 4 item assignment.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xmr.data import open_split
from xmr.data.text import tokenize
from xmr.eval.evaluate import encode, take
from xmr.eval.kshot import content_words, rare_words, word_frequencies
from xmr.runs import open_run

RARE_K = 5


def load(run: str, cache: Path):
    """(model, test PairData, encoded (images, captions), checkpoint meta) of a trained ACMM run."""
    trained = open_run(run)
    model, meta = trained.model, trained.meta
    if meta["model"] != "acmm" or not model.use_memory:
        raise SystemExit(f"{run}: not an ACMM run with a memory")
    data = trained.data("test", cache=cache, progress=False)
    return model, data, encode(model, data), meta


@torch.no_grad()
def write_weights(model, data, reps, captions: np.ndarray, batch: int = 256):
    """Yield (caption indices, ``model.write_weights`` output) for the matched pairs of ``captions``."""
    img, txt = reps
    for s in range(0, len(captions), batch):
        cols = torch.as_tensor(captions[s: s + batch])
        yield cols, model.write_weights(take(img, torch.as_tensor(data.caption_image[cols.numpy()])), take(txt, cols))


def cosines(model, data, reps) -> dict[str, np.ndarray]:
    """Figure 3's cosines over all test pairs: ``main`` (the histogram) and, for an unaligned run,
    ``word_vs_mean_region``."""
    main, mean_region = [], []
    for _, ww in write_weights(model, data, reps, np.arange(data.n_captions)):
        region, word = F.normalize(ww["region"], dim=-1), F.normalize(ww["word"], dim=-1)
        wmask = ww["word_mask"]
        if model.use_alignment:  # same word j on both sides: (P, J)
            main.append((region * word).sum(-1)[wmask])
            continue
        pair = torch.einsum("pin,pjn->pij", region, word)  # every (region i, word j) of the pair
        main.append(pair[ww["region_mask"][:, :, None] & wmask[:, None, :]])
        rmask = ww["region_mask"][..., None].to(ww["region"].dtype)
        mean_w = F.normalize((ww["region"] * rmask).sum(1) / rmask.sum(1).clamp(min=1), dim=-1)  # (P, N)
        mean_region.append((word * mean_w[:, None]).sum(-1)[wmask])
    out = {"main": torch.cat(main).numpy()}
    if mean_region:
        out["word_vs_mean_region"] = torch.cat(mean_region).numpy()
    return out


def _stats(x: np.ndarray) -> dict:
    return {"n": int(x.size), "mean": float(x.mean()), "median": float(np.median(x)), "std": float(x.std())}


def rare_word_items(model, data, reps, meta) -> tuple[dict[str, int], Counter]:
    """Each rare test word (training frequency <= RARE_K) -> the memory item with the highest
    word-side write weight averaged over its occurrences; and the words' occurrence counts."""
    test = data.split.captions
    freq = word_frequencies(open_split(meta["data"], "train").captions)
    rare = set(rare_words(test, freq, [RARE_K])[RARE_K])
    spots = defaultdict(list)  # caption -> [(position, word)]: token t is word position t
    for c, caption in enumerate(test):
        for t, tok in enumerate(tokenize(caption)[: meta["max_len"]]):
            w = content_words(tok)
            if w and w[0] in rare:
                spots[c].append((t, w[0]))
    captions = np.array(sorted(spots), dtype=np.int64)
    sums, counts = {}, Counter()
    for cols, ww in write_weights(model, data, reps, captions):
        for row, c in enumerate(cols.tolist()):
            for t, w in spots[c]:
                sums[w] = sums.get(w, 0) + ww["word"][row, t].double()
                counts[w] += 1
    return {w: int(torch.argmax(s)) for w, s in sums.items()}, counts


def pca2(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First two principal-component coordinates of the rows and the variance ratios they explain."""
    centred = items - items.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T, (s[:2] ** 2) / max(float((s ** 2).sum()), 1e-12)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the trained ACMM run for Figure 4 (and, by default, Figure 3's aligned side)")
    p.add_argument("out_dir")
    p.add_argument("--aligned", help="run with alignment and memory for Figure 3 (default: RUN)")
    p.add_argument("--unaligned", help='the "mem" ablation run (no alignment) for Figure 3')
    p.add_argument("--annotate", type=int, default=8, help="label this many marked items with their words")
    p.add_argument("--cache", default="runs/cache")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Figure 3
    sides = {"aligned": args.aligned or args.run, "unaligned": args.unaligned}
    fig3, hist = {}, {}
    for side, run in sides.items():
        if run is None:
            continue
        model, data, reps, _ = load(run, cache)
        if (side == "aligned") != model.use_alignment:
            raise SystemExit(f"{run}: the {side} side needs a run with use_alignment={side == 'aligned'}")
        cos = cosines(model, data, reps)
        hist[side] = cos["main"]
        fig3[side] = {"run": str(run), "pairs": "same word j" if side == "aligned" else "every (region i, word j)",
                      **_stats(cos["main"])}
        if "word_vs_mean_region" in cos:
            fig3[side]["word_vs_mean_region"] = _stats(cos["word_vs_mean_region"])
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    bins = np.linspace(0, 1, 51)
    for side, colour in (("unaligned", "tab:blue"), ("aligned", "tab:red")):
        if side in hist:
            ax.hist(hist[side], bins=bins, density=True, alpha=0.55, color=colour,
                    label=f"{side} memory (mean {hist[side].mean():.2f})")
    ax.set(xlabel="cosine(w^Vw, w^Sw)", ylabel="density", xlim=(0, 1),
           title="Cross-modal write-weight similarity (test pairs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "acmm_write_weights.png", dpi=110)
    plt.close(fig)

    # Figure 4
    model, data, reps, meta = load(args.run, cache)
    items = model.memory[-1].double().numpy()
    xy, ratio = pca2(items)
    word_item, counts = rare_word_items(model, data, reps, meta)
    by_item = defaultdict(list)
    for w in sorted(word_item, key=lambda w: (-counts[w], w)):
        by_item[word_item[w]].append(w)
    marked = np.zeros(len(items), dtype=bool)
    marked[list(by_item)] = True
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    ax.scatter(xy[~marked, 0], xy[~marked, 1], s=18, c="0.6", label="memory item")
    sizes = np.array([len(by_item[i]) for i in np.flatnonzero(marked)])
    ax.scatter(xy[marked, 0], xy[marked, 1], s=18 + 60 * np.sqrt(sizes / max(1, sizes.max())), c="tab:red",
               label=f"item of rare words (train freq <= {RARE_K})")
    for i in sorted(by_item, key=lambda i: -len(by_item[i]))[: args.annotate]:
        words = by_item[i]
        label = ", ".join(words[:2]) + (f" +{len(words) - 2}" if len(words) > 2 else "")
        right = xy[i, 0] > np.median(xy[:, 0])  # labels point inwards, so none leaves the axes
        ax.annotate(label, xy[i], xytext=(-4 if right else 4, 4), textcoords="offset points", fontsize=7,
                    color="darkred", ha="right" if right else "left")
    ax.set(xlabel=f"PC1 ({100 * ratio[0]:.0f}% var.)", ylabel=f"PC2 ({100 * ratio[1]:.0f}% var.)",
           title=f"ACMM memory items (PCA); {len(word_item)} rare test words")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "acmm_memory_pca.png", dpi=110)
    plt.close(fig)

    dist = np.linalg.norm(items - items.mean(0), axis=1)
    unit = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
    gram = unit @ unit.T
    offdiag = float((gram.sum() - np.trace(gram)) / max(1, gram.size - len(gram)))
    if offdiag > 0.99:
        print(f"warning: the memory items are (nearly) identical (mean pairwise cosine {offdiag:.4f}): content "
              "addressing cannot tell them apart, so every read / write weight is uniform", flush=True)
    fig4 = {"run": str(args.run), "bank": "shared" if model.shared_memory else "word side (bank -1)",
            "items": int(len(items)), "item_mean_pairwise_cosine": offdiag,
            "explained_variance": ratio.tolist(), "rare_k": RARE_K,
            "n_rare_words": len(word_item), "n_items_marked": int(marked.sum()),
            "mean_dist_to_centroid": {"marked": float(dist[marked].mean()) if marked.any() else None,
                                      "unmarked": float(dist[~marked].mean()) if (~marked).any() else None},
            "item_words": {str(i): ws for i, ws in sorted(by_item.items())}}
    stats = {"figure3": fig3, "figure4": fig4}
    if {"aligned", "unaligned"} <= set(fig3):
        stats["mean_cosine"] = {"aligned": fig3["aligned"]["mean"], "unaligned": fig3["unaligned"]["mean"]}
    (out / "acmm_figures.json").write_text(json.dumps(stats, indent=1))
    print(json.dumps({k: v for k, v in stats.items() if k != "figure4"} | {"figure4": {
        k: v for k, v in fig4.items() if k != "item_words"}}, indent=1))
    print(f"wrote {out / 'acmm_write_weights.png'}, {out / 'acmm_memory_pca.png'}, {out / 'acmm_figures.json'}")


if __name__ == "__main__":
    main()
