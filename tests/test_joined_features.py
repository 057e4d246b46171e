"""Joined extractors (``a+b``): each part cached on its own, features side by side for pooled and
grid input, clear refusals, and the search path serving a model trained on them with the same
features at query time."""
from __future__ import annotations

import numpy as np
import pytest

from xmr.data import DatasetSpec
from xmr.data.base import DataError
from xmr.features.image import ExtractorSpec, extract_split, extractor_parts
from xmr.features.store import feature_root, split_with_features

pytestmark = pytest.mark.slow  # extracts features, trains

DATA = "synthetic,seed=4,n_train=40,n_dev=12,n_test=12"
# Small resolutions keep the networks fast; lite0 and lite1 at 64 have the same 2 x 2 grid.
A, B, C = "efficientnet-lite0-64", "efficientnet-lite1-64", "efficientnet-lite2-96"


def test_pooled_and_grid_features_are_the_parts_side_by_side_each_cached_once(tmp_path):
    joined = split_with_features(DATA, "dev", "pooled", f"{A}+{B}", cache=tmp_path, progress=False)
    parts = [split_with_features(DATA, "dev", "pooled", e, cache=tmp_path, progress=False) for e in (A, B)]
    assert joined.features.shape == (12, 2 * 1280)
    np.testing.assert_array_equal(joined.features, np.concatenate([p.features for p in parts], 1))
    # the joined extraction filled each part's own cache, which a single-part request reuses
    spec = DatasetSpec.parse(DATA)
    for e in (A, B):
        assert extract_split(joined, feature_root(spec, e, tmp_path), e, progress=False)["reused"]
    assert not feature_root(spec, f"{A}+{B}", tmp_path).exists()

    grid = split_with_features(DATA, "dev", "regions", f"{A}+{B}", cache=tmp_path, progress=False)
    assert grid.features.shape == (12, 4, 2 * 1280)
    # pooled = the grid's mean, part by part (fp16 storage)
    np.testing.assert_allclose(np.asarray(grid.features, np.float32).mean(1), joined.features, atol=2e-2)


def test_mismatched_grids_trunk_and_repeated_parts_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"every part needs the same grid"):
        split_with_features(DATA, "dev", "regions", f"{A}+{C}", cache=tmp_path, progress=False)
    # pooled features of different grids join fine
    assert split_with_features(DATA, "dev", "pooled", f"{A}+{C}", cache=tmp_path,
                               progress=False).features.shape == (12, 2560)
    with pytest.raises(ValueError, match="from one network"):
        split_with_features(DATA, "dev", "trunk", f"{A}+{B}", cache=tmp_path, progress=False)
    with pytest.raises(ValueError, match="names a part twice"):
        extractor_parts(f"{A}+{A}")
    with pytest.raises(ValueError, match="joins several extractors"):
        ExtractorSpec.parse(f"{A}+{B}")
    with pytest.raises(ValueError, match="unknown image extractor"):
        extractor_parts(f"{A}+efficientnet-lite9-64")


def test_a_model_on_joined_features_searches_a_folder_with_the_same_features(tmp_path):
    from xmr.data import open_split
    from xmr.search.engine import Searcher
    from xmr.search.index import Collection, build_index
    from xmr.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(model="vsepp", preset="tiny", data=DATA, extractor=f"{A}+{B}", out=str(run),
                      cache=str(tmp_path / "cache"), overrides={"epochs": 1}, progress=False))
    split = open_split(DATA, "test")
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        split.load_image(i).save(folder / f"p{i}.png")
    out = tmp_path / "index"
    build_index(str(run), Collection("images", str(folder)), out, cache=tmp_path / "cache", progress=False)
    searcher = Searcher(out)
    stored = np.asarray(searcher.image_features, np.float32)
    assert stored.shape == (5, 2560)
    # a query image is encoded by both networks at query time, as the folder's images were at build
    query = searcher.image_batch_from_pil([split.load_image(i) for i in range(5)])["image"].numpy()
    np.testing.assert_allclose(query, stored, atol=2e-2)
    assert {h.image_id for h in searcher.search_text("a shape", k=5)} == {f"p{i}.png" for i in range(5)}
