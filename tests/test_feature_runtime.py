"""The feature runtimes: ONNX Runtime's features equal the TorchScript ones within TOLERANCE, the
cache keeps each runtime's rows apart, a folder keeps the runtime it was made with, and
``--runtime torch`` still works; a bad runtime name is a one-line error."""
from __future__ import annotations

import json

import numpy as np
import pytest

from xmr.cli import main
from xmr.data.synthetic import read_synthetic
from xmr.features.fingerprint import key_file
from xmr.features.image import (DEFAULT_RUNTIME, TOLERANCE, ExtractorSpec, _key, check_runtime,
                                extract_split, folder_runtime, load_network, network_maps)
from xmr.data.images import to_tensor_array


def test_the_cache_key_differs_by_runtime():
    split = read_synthetic("test", seed=1, n_images=3)
    keys = {r: _key(split, "efficientnet-lite0-224", r) for r in ("torch", "onnx")}
    assert keys["torch"] != keys["onnx"]
    from xmr.features.fingerprint import image_key

    assert keys["torch"] == image_key(split, "efficientnet-lite0-224")  # caches from before stay valid


def test_a_bad_runtime_name_is_a_one_line_error(capsys):
    with pytest.raises(ValueError, match="unknown feature runtime 'tensorrt'; use one of torch, onnx"):
        check_runtime("tensorrt")
    assert main(["features", "synthetic", "--runtime", "tensorrt", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "xmr: error: unknown feature runtime 'tensorrt'; use one of torch, onnx"


@pytest.mark.slow
def test_onnx_features_match_the_torch_ones(tmp_path):
    split = read_synthetic("test", seed=3, n_images=6)
    x = np.stack([to_tensor_array(split.load_image(i), 224) for i in range(6)])
    spec = ExtractorSpec.parse("efficientnet-lite0-224")
    (t_trunk, t_grid), (o_trunk, o_grid) = (network_maps(x, load_network(spec, r, tmp_path)) for r in ("torch", "onnx"))
    assert (tmp_path / "efficientnet-lite0-224.onnx").is_file()
    for t, o in ((t_trunk, o_trunk), (t_grid, o_grid), (t_grid.mean(1), o_grid.mean(1))):
        assert float((t - o).abs().max()) < TOLERANCE["max_abs"]
    cosine = (t_grid.mean(1) * o_grid.mean(1)).sum(1) / (t_grid.mean(1).norm(dim=1) * o_grid.mean(1).norm(dim=1))
    assert float(cosine.min()) >= TOLERANCE["min_cosine"]


@pytest.mark.slow
def test_runtimes_share_no_rows_and_a_folder_keeps_its_runtime(tmp_path, capsys):
    split = read_synthetic("test", seed=4, n_images=5)
    torch_dir, onnx_dir = tmp_path / "t", tmp_path / "o"
    t = extract_split(split, torch_dir, batch_size=2, progress=False, runtime="torch")
    assert t["runtime"] == "torch" and folder_runtime(torch_dir) == "torch"
    o = extract_split(split, onnx_dir, batch_size=2, progress=False)
    assert o["runtime"] == DEFAULT_RUNTIME == "onnx"
    pooled = [np.load(d / "pooled" / "test_ims.npy").astype(np.float32) for d in (torch_dir, onnx_dir)]
    np.testing.assert_allclose(pooled[1], pooled[0], atol=TOLERANCE["max_abs"] * 4)  # plus the fp16 step

    # No runtime asked: a folder made by torch stays torch (reused, not recomputed)...
    assert extract_split(split, torch_dir, progress=False)["reused"]
    # ...and so does one from before runtimes were recorded.
    info = torch_dir / "extractor.json"
    info.write_text(json.dumps({k: v for k, v in json.loads(info.read_text()).items() if k != "runtime"}))
    assert folder_runtime(torch_dir) == "torch" and extract_split(split, torch_dir, progress=False)["reused"]
    # Asking for the other runtime extracts again, saying why; the key file records the runtime.
    again = extract_split(split, torch_dir, progress=False, runtime="onnx")
    assert not again["reused"] and "extracted with the torch runtime" in capsys.readouterr().err
    assert json.loads(key_file(torch_dir / "test").read_text())["runtime"] == "onnx"


@pytest.mark.slow
def test_features_command_runtime_torch(tmp_path, capsys):
    assert main(["features", "synthetic,n_test=4", "--splits", "test", "--runtime", "torch", "--quiet",
                 "--cache", str(tmp_path)]) == 0
    (info,) = tmp_path.rglob("extractor.json")
    assert json.loads(info.read_text())["runtime"] == "torch"
    assert not list(tmp_path.rglob("*.onnx"))  # the torch path exports nothing
