"""Figures for "Revisiting Cross Modal Retrieval": the t-SNE of test embeddings (Fig. 3: images
and encoded captions of the Flickr8k test split in one 2-D map, two colours) and a picture of an
encoded sentence (Sec. 3.1, the block encoding of xmr/data/text_image.py) exactly as the run's
model draws it (its resolution and text layout), enlarged 4 times.

    .venv/bin/python experiments/revisiting_figures.py RUN OUT_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(run: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from PIL import Image
    from xmr.eval.evaluate import encode
    from xmr.runs import open_run

    trained = open_run(run)
    model = trained.model
    data = trained.data("test")
    img, txt = encode(model, data)
    im, tx = model.embed(img).numpy(), model.embed(txt).numpy()
    points = TSNE(n_components=2, init="pca", random_state=0, perplexity=30).fit_transform(np.concatenate([im, tx]))
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(*points[len(im):].T, s=2, c="tab:red", alpha=0.5, label=f"encoded captions ({len(tx)})")
    ax.scatter(*points[:len(im)].T, s=4, c="tab:blue", alpha=0.7, label=f"images ({len(im)})")
    ax.set(title="t-SNE of test embeddings, one network (Flickr8k)", xticks=[], yticks=[])
    ax.legend(markerscale=4)
    fig.tight_layout()
    fig.savefig(out / "tsne.png", dpi=110)
    plt.close(fig)
    picture = model.render_texts(data.text_batch(np.arange(1)))[0].numpy()
    Image.fromarray(picture.repeat(4, 0).repeat(4, 1), "RGB").save(out / "encoded-sentence.png")
    print(f"wrote {out / 'tsne.png'} and {out / 'encoded-sentence.png'} ({data.split.captions[0]!r})")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
