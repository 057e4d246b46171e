"""JGCAR attention pictures (the paper's Figures 2-4): for a few test images, the image with the
co-attention heat-map a^v over its grid cells (Eq. 13) and the top-3 words by a^s, for the caption
the model ranks first among all test captions (two-step, K = 100). With MiniLM states as the
words (``text_input="bert"``) the words are MiniLM's word pieces, [CLS] and [SEP] included.

    .venv/bin/python experiments/jgcar_attention.py RUN OUT.png [--images 0 7 21 42] [--set KEY=VALUE]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from xmr.data import open_split
from xmr.data.text import tokenize
from xmr.eval.evaluate import encode, take
from xmr.options import key_values
from xmr.runs import open_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("out")
    p.add_argument("--images", type=int, nargs="+", default=[0, 7, 21, 42])
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a scoring setting, as in xmr eval --set (e.g. global_weight=1)")
    args = p.parse_args()
    torch.set_num_threads(2)
    trained = open_run(args.run, overrides=key_values(args.set, p.error))
    model, meta = trained.model, trained.meta
    data = trained.data("test", progress=False)
    split = open_split(meta["data"], "test")
    img, txt = encode(model, data)
    q = torch.as_tensor(args.images)
    with torch.no_grad():
        cand = (model.embed(take(img, q)) @ model.embed(txt).T).topk(args.k, dim=1).indices  # (Q, K)
        fine = model.pair_similarity(take(img, q.repeat_interleave(args.k)), take(txt, cand.reshape(-1)))
        best = cand.gather(1, fine.view(len(q), args.k).argmax(1, keepdim=True)).squeeze(1)
        a_v, a_s = model.attention_maps(take(img, q), take(txt, best))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "bert" in model.inputs.text:
        from xmr.backbones import minilm

        tokenizer = minilm()[0]
        words_of = lambda caption: tokenizer.convert_ids_to_tokens(tokenizer(caption)["input_ids"])  # noqa: E731
    else:
        words_of = tokenize
    side = int(round(a_v.size(1) ** 0.5))
    fig, axes = plt.subplots(2, len(q), figsize=(3.2 * len(q), 6.4))
    for col, (i, c) in enumerate(zip(q.tolist(), best.tolist())):
        photo = split.load_image(i).resize((224, 224))
        heat = a_v[col].view(side, side).numpy()
        words = words_of(split.captions[c])[: a_s.size(1)]
        top = np.argsort(-a_s[col, : len(words)].numpy())[:3]
        axes[0, col].imshow(photo)
        axes[0, col].set_title("correct" if data.caption_image[c] == i else "not a ground-truth caption", fontsize=8)
        axes[1, col].imshow(photo)
        axes[1, col].imshow(heat, cmap="jet", alpha=0.5, extent=(0, 224, 224, 0), interpolation="bilinear")
        axes[1, col].set_title("top words: " + ", ".join(words[t] for t in top), fontsize=8)
        fig.text((col + 0.5) / len(q), 0.02, "\n".join(_wrap(split.captions[c], 38)), ha="center", fontsize=7)
        for ax in axes[:, col]:
            ax.axis("off")
    fig.suptitle("JGCAR co-attention: image attention a^v and top-3 words of a^s for the top-ranked caption")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + len(word) > width:
            lines.append(line)
            line = ""
        line = f"{line} {word}".strip()
    return lines + [line]


if __name__ == "__main__":
    main()
