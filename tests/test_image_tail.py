"""The fine-tunable CNN tail over cached trunk activations (issue: VSE++ at the published level):
the extractor caches the trunk in the same pass as the grid and pooled features, the tail at its
pretrained weights reproduces those features, augmentation is seeded, and training on the trunk
input resumes exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from xmr.backbones import BACKBONES, FEATURE_DIM
from xmr.data.pairs import augment_maps
from xmr.features.image import extract_split, trunk_dir
from xmr.features.store import feature_root, split_with_features
from xmr.data import DatasetSpec, open_split
from xmr.models.image_tail import ImageTail
from xmr.train import TrainConfig, train

from conftest import SYNTHETIC_SMALL as DATA

TRUNK = BACKBONES["efficientnet-lite0"][2], 7, 7


def test_trunk_is_cached_beside_grid_and_reused(feature_cache):
    trunk = split_with_features(DATA, "dev", "trunk", cache=feature_cache, progress=False)
    pooled = split_with_features(DATA, "dev", "pooled", cache=feature_cache, progress=False)
    assert trunk.features.shape == (pooled.n_images, *TRUNK) and trunk.features.dtype == np.float16
    root = feature_root(DatasetSpec.parse(DATA), "efficientnet-lite0-224", feature_cache)
    assert (trunk_dir(root) / "dev_ims.npy").is_file()
    again = extract_split(open_split(DATA, "dev"), root, progress=False)
    assert again["reused"]


def test_pretrained_tail_reproduces_the_frozen_features(feature_cache):
    """At its ImageNet weights the tail maps the cached trunk to the cached grid (fp16 storage)."""
    trunk = split_with_features(DATA, "dev", "trunk", cache=feature_cache, progress=False)
    grid = split_with_features(DATA, "dev", "regions", cache=feature_cache, progress=False)
    tail = ImageTail("efficientnet-lite0", tail_blocks=1).eval()
    with torch.no_grad():
        out = tail(torch.from_numpy(np.asarray(trunk.features[:4], dtype=np.float32)))
    assert out.shape == (4, 49, FEATURE_DIM)
    torch.testing.assert_close(out, torch.from_numpy(np.asarray(grid.features[:4], dtype=np.float32)),
                               rtol=2e-2, atol=2e-2)


def test_tail_trains_only_its_blocks_and_head():
    tail = ImageTail("efficientnet-lite0", tail_blocks=1, pretrained=False).train()
    assert all(not p.requires_grad for p in tail.frozen.parameters())
    assert len(tail.frozen) == 2 and len(tail.blocks) == 1
    assert not any(m.training for m in tail.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(ValueError, match="tail_blocks"):
        ImageTail("efficientnet-lite0", tail_blocks=4, pretrained=False)


def test_augmentation_is_seeded_and_crops_and_flips():
    maps = torch.arange(2 * 3 * 7 * 7, dtype=torch.float32).reshape(2, 3, 7, 7)
    a = augment_maps(maps, "crop-flip", np.random.default_rng(3))
    b = augment_maps(maps, "crop-flip", np.random.default_rng(3))
    torch.testing.assert_close(a, b)
    assert 5 <= a.shape[-1] <= 7 and a.shape[:2] == (2, 3)
    flipped = augment_maps(maps, "flip", np.random.default_rng(0))
    for row in range(2):  # each row is the map itself or its mirror image
        assert torch.equal(flipped[row], maps[row]) or torch.equal(flipped[row], maps[row].flip(-1))
    crop = augment_maps(maps, "crop", np.random.default_rng(1))
    side = crop.shape[-1]
    found = [(y, x) for y in range(8 - side) for x in range(8 - side)
             if torch.equal(crop[0], maps[0, :, y:y + side, x:x + side])]
    assert found, "a crop is a window of the map"


def _config(cache, out, **overrides) -> TrainConfig:
    return TrainConfig(model="vsepp", preset="tiny", data=DATA, out=str(out), cache=str(cache), progress=False,
                       overrides={"image_input": "trunk", "tail_blocks": 1, "augment": "crop-flip",
                                  "batch_size": 32, **overrides})


def test_trunk_training_resumes_exactly(feature_cache, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(_config(feature_cache, full, epochs=2))
    train(_config(feature_cache, part, epochs=1))
    train(_config(feature_cache, part, epochs=2), resume=True)
    a, b = load_file(str(full / "last.safetensors")), load_file(str(part / "last.safetensors"))
    keys = [k for k in a if k.startswith("model.tail.blocks")]
    assert keys
    for k in a:
        if k.startswith("model."):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    rows = [json.loads(r) for r in (full / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and np.isfinite(rows[-1]["train_loss"])


def test_fine_tuning_starts_from_the_frozen_feature_run(feature_cache, tmp_path):
    """init_from a pooled-feature run: at step 0 the trunk model with its pretrained tail scores
    exactly as that run did (the tail reproduces the pooled features)."""
    from xmr.eval.evaluate import evaluate
    from xmr.runs import open_run

    pooled_run = tmp_path / "pooled"
    train(TrainConfig(model="vsepp", preset="tiny", data=DATA, out=str(pooled_run), cache=str(feature_cache),
                      progress=False, overrides={"epochs": 1}))
    ft = tmp_path / "ft"
    train(_config(feature_cache, ft, epochs=1, lr=0.0, init_from=str(pooled_run), augment="none"))
    a, b = open_run(pooled_run), open_run(ft)
    dev_a = evaluate(a.model, a.data("dev", DATA, feature_cache, progress=False))
    dev_b = evaluate(b.model, b.data("dev", DATA, feature_cache, progress=False))
    assert abs(dev_a["rsum"] - dev_b["rsum"]) < 3.0, (dev_a["rsum"], dev_b["rsum"])


def test_paper_ft_fine_tunes_the_whole_cnn_from_pixels(feature_cache, tmp_path):
    """The paper preset's path (FT + RC from pixels), small: every CNN block trains, crops stay seeded."""
    from xmr.models import create_model, get_preset

    preset = get_preset("vsepp", "paper-ft")
    assert preset.model["image_input"] == "pixels" and preset.train["augment"] == "crop-flip"
    run = tmp_path / "ft"
    train(TrainConfig(model="vsepp", preset="tiny", data=DATA, out=str(run), cache=str(feature_cache),
                      progress=False, overrides={"image_input": "pixels", "resolution": 64, "augment": "crop-flip",
                                                 "epochs": 1, "batch_size": 16, "train_images": 40,
                                                 "tail_lr_scale": 0.1}))
    weights = load_file(str(run / "best.safetensors"))
    fresh = create_model("vsepp", vocab_size=10, image_dim=1280, image_input="pixels", resolution=64)
    stem = fresh.tail.stem[0].weight
    assert len(fresh.tail.frozen) == 0 and len(fresh.tail.blocks) == 16  # every Lite0 block trains
    assert not torch.equal(weights["model.tail.stem.0.weight"], stem), "the stem was fine-tuned"
    maps = torch.randint(0, 255, (3, 64, 64, 3), dtype=torch.uint8)
    a = augment_maps(maps, "crop", np.random.default_rng(5))
    assert a.dtype == torch.uint8 and a.shape[-1] == 3 and 56 <= a.shape[1] == a.shape[2] <= 64
