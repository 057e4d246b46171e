"""Feature extraction: format, resume after an interruption, reuse; BERT token states."""
from __future__ import annotations

import json

import numpy as np
import pytest

from xmr.data.synthetic import read_synthetic
from xmr.features.image import FEATURE_DIM, extract_split
from xmr.features.text import BERT_DIM, bert_states
from xmr.data.precomputed import read_precomputed

pytestmark = pytest.mark.slow  # trains, extracts features or starts processes


class Interrupt(RuntimeError):
    pass


def test_extract_writes_precomputed_format_and_resumes(tmp_path):
    split = read_synthetic("test", seed=5, n_images=10)
    ref = extract_split(split, tmp_path / "ref", batch_size=4, progress=False)
    assert ref["images"] == 10 and not ref["reused"]
    grid = read_precomputed(tmp_path / "ref" / "grid", "test")
    pooled = read_precomputed(tmp_path / "ref" / "pooled", "test")
    assert grid.features.shape == (10, 49, FEATURE_DIM) and grid.features.dtype == np.float16
    assert pooled.features.shape == (10, FEATURE_DIM)
    assert isinstance(grid.features, np.memmap)
    assert grid.captions == split.captions and grid.image_ids == split.image_ids
    np.testing.assert_allclose(np.asarray(grid.features, np.float32).mean(1), pooled.features, atol=2e-2)

    # Interrupt after the first batch of 4: the finished rows are kept and the run resumes there.
    broken = read_synthetic("test", seed=5, n_images=10)
    render = broken.images

    def fail_at_6(i):
        if i == 6:
            raise Interrupt("simulated crash")
        return render(i)

    broken.images = fail_at_6
    with pytest.raises(Interrupt):
        extract_split(broken, tmp_path / "run", batch_size=4, progress=False)
    progress = json.loads((tmp_path / "run" / "test.progress.json").read_text())
    assert progress["done"] == 4
    assert not (tmp_path / "run" / "grid" / "test_ims.npy").exists()

    calls = []

    def counting(i):
        calls.append(i)
        return render(i)

    broken.images = counting
    resumed = extract_split(broken, tmp_path / "run", batch_size=4, progress=False)
    assert resumed["images"] == 6 and min(calls) == 4  # only the missing rows were computed
    again = read_precomputed(tmp_path / "run" / "grid", "test")
    np.testing.assert_array_equal(np.asarray(again.features), np.asarray(grid.features))
    assert extract_split(broken, tmp_path / "run", progress=False)["reused"]


def test_bert_states_shapes_mask_and_cache(tmp_path):
    caps = ["a dog runs on the beach", "two people", "a red circle on the left next to a blue square"]
    states, mask = bert_states(caps, tmp_path, "test", max_len=12, progress=False)
    assert states.shape == (3, 12, BERT_DIM) and mask.shape == (3, 12)
    # [CLS] a dog runs on the beach [SEP] = 8 tokens; "two people" = 4.
    assert mask[0].sum() == 8 and mask[1].sum() == 4 and mask[2].sum() == 12  # truncated
    assert np.isfinite(np.asarray(states, np.float32)).all()
    assert not np.allclose(states[0, 1], states[1, 1])
    again, _ = bert_states(caps, tmp_path, "test", max_len=12, progress=False)
    assert isinstance(again, np.memmap)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(states))
