"""Class-labelled multi-modal data (CMMN's input): LabelledSet checks, .npz and .mat readers, synthetic scenes.

Every file is written into tmp_path here; nothing reads /work/shared.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from xmr.data.base import DataError
from xmr.data.labelled_sets import (
    CMPLACES_MODALITIES,
    LabelledSet,
    Modality,
    load_mat,
    load_npz,
    save_npz,
    synthetic_scenes,
    with_modalities,
)

def feats(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def small_set(aligned: bool = True, n: int = 10, c: int = 3) -> LabelledSet:
    labels = np.zeros((n, c), dtype=bool)
    labels[np.arange(n), np.arange(n) % c] = True
    labels[0, 1] = labels[4, 2] = True  # two multi-label items
    splits = {"train": np.arange(6), "dev": np.array([6]), "test": np.arange(7, n),
              "database": np.arange(7), "query": np.arange(7, n)}  # database overlaps train
    return LabelledSet("tiny", {"image": Modality(feats(n, 5), labels, splits),
                                "text": Modality(feats(n, 3, 1), labels.copy(), dict(splits))},
                       ["a", "b", "c"], aligned=aligned)


def assert_same(a: LabelledSet, b: LabelledSet) -> None:
    assert (a.name, a.class_names, a.aligned) == (b.name, b.class_names, b.aligned)
    assert list(a.modalities) == list(b.modalities)
    for m in a.modalities:
        x, y = a.modalities[m], b.modalities[m]
        np.testing.assert_array_equal(x.features, y.features)
        np.testing.assert_array_equal(x.labels, y.labels)
        assert x.splits.keys() == y.splits.keys()
        for s in x.splits:
            np.testing.assert_array_equal(x.splits[s], y.splits[s])


# --------------------------------------------------------------------------- LabelledSet


def test_split_and_describe():
    data = small_set()
    x, y = data.split("text", "test")
    assert x.shape == (3, 3) and x.dtype == np.float32 and y.shape == (3, 3) and y.dtype == bool
    lines = data.describe().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("tiny/image: N=10 D=5 train=6 dev=1 test=3 database=7 query=3 C=3 cardinality=1.20")
    with pytest.raises(KeyError, match="no modality 'audio'"):
        data.split("audio", "train")
    with pytest.raises(KeyError, match="no split 'val'"):
        data.split("image", "val")


def test_normalises_dtypes():
    n = 4
    data = LabelledSet("t", {m: Modality(np.ones((n, 2)), np.eye(n, 2, dtype=np.int8), {"train": [0, 1]})
                             for m in ("a", "b")}, ["x", "y"])
    mod = data.modalities["a"]
    assert mod.features.dtype == np.float32 and mod.labels.dtype == bool and mod.splits["train"].dtype == np.int64


def _mod(n=6, d=4, c=3, **kw) -> Modality:
    base = dict(features=feats(n, d), labels=np.eye(c, dtype=bool)[np.arange(n) % c], splits={"train": np.arange(n)})
    base.update(kw)
    return Modality(**base)


@pytest.mark.parametrize("mods, aligned, message", [
    ({"image": _mod()}, False, r"at least 2 modalities.*\['image'\]"),
    ({"image": _mod(), "text": _mod(features=feats(5, 4))}, False, r"modality 'text'.*5 feature rows but 6 label rows"),
    ({"image": _mod(features=np.where(np.eye(6, 4) > 0, np.nan, 0.0)), "text": _mod()}, False,
     r"modality 'image'.*NaN or inf"),
    ({"image": _mod(features=np.full((6, 4), 1e300)), "text": _mod()}, False, r"modality 'image'.*NaN or inf"),
    ({"image": _mod(), "text": _mod(labels=np.eye(4, dtype=bool)[np.arange(6) % 4])}, False,
     r"modality 'text' has labels over 4 classes.*3 class names"),
    ({"image": _mod(), "text": _mod(splits={"test": np.array([0, 6])})}, False,
     r"modality 'text'.*split 'test'.*out of range \[0, 6\)"),
    ({"image": _mod(), "text": _mod(splits={"test": np.array([-1])})}, False, r"modality 'text'.*out of range"),
    ({"image": _mod(), "text": _mod(n=9)}, True, r"aligned.*different numbers of rows.*'image': 6, 'text': 9"),
    ({"image": _mod(labels=np.full((6, 3), 2)), "text": _mod()}, False, r"modality 'image'.*0/1"),
    ({"image": _mod(labels=np.arange(6) % 3), "text": _mod()}, False, r"modality 'image'.*\(N, C\)"),
])
def test_validation_errors(mods, aligned, message):
    with pytest.raises(ValueError, match=message):  # DataError is a ValueError
        LabelledSet("bad", mods, ["a", "b", "c"], aligned=aligned)


def test_unaligned_sizes_may_differ():
    data = LabelledSet("u", {"image": _mod(), "text": _mod(n=9)}, ["a", "b", "c"], aligned=False)
    assert {m: v.n for m, v in data.modalities.items()} == {"image": 6, "text": 9}


# --------------------------------------------------------------------------- npz


def test_npz_round_trip_multilabel(tmp_path):
    data = small_set()
    path = save_npz(data, tmp_path / "sub" / "tiny.npz")
    back = load_npz(path)
    assert_same(data, back)
    assert back.modalities["image"].labels.sum() == 12  # the two multi-label rows survive
    # Unaligned too, and a suffix other than .npz is kept as given.
    loose = small_set(aligned=False)
    assert_same(loose, load_npz(save_npz(loose, tmp_path / "tiny.data")))


def write_ids_npz(path: Path, n_image=50, n_text=40, aligned=False, **extra) -> Path:
    np.savez(path, image_features=feats(n_image, 6), image_labels=np.arange(n_image) % 4,
             spatial_text_features=feats(n_text, 3, 1), spatial_text_labels=(np.arange(n_text) * 3) % 4,
             aligned=np.asarray(aligned), **extra)
    return path


def test_npz_class_ids_become_one_hot(tmp_path):
    data = load_npz(write_ids_npz(tmp_path / "ids.npz", class_names=np.array(["w", "x", "y", "z"])))
    assert list(data.modalities) == ["image", "spatial_text"]  # underscores in a modality name are fine
    assert data.class_names == ["w", "x", "y", "z"] and data.name == "ids"
    lab = data.modalities["image"].labels
    assert lab.shape == (50, 4) and lab.dtype == bool and (lab.sum(1) == 1).all()
    np.testing.assert_array_equal(lab.argmax(1), np.arange(50) % 4)
    np.testing.assert_array_equal(data.modalities["spatial_text"].labels.argmax(1), (np.arange(40) * 3) % 4)
    # Without class_names: C = largest id + 1, names "0".."3".
    assert load_npz(write_ids_npz(tmp_path / "ids2.npz")).class_names == ["0", "1", "2", "3"]


def test_npz_ids_out_of_range(tmp_path):
    path = write_ids_npz(tmp_path / "bad.npz", class_names=np.array(["a", "b"]))
    with pytest.raises(DataError, match=r"image_labels has class ids outside \[0, 2\)"):
        load_npz(path)


def test_npz_seeded_split_is_deterministic(tmp_path):
    path = write_ids_npz(tmp_path / "ids.npz")
    a, b = load_npz(path), load_npz(path)
    assert_same(a, b)
    img = a.modalities["image"].splits
    assert {s: len(i) for s, i in img.items()} == {"train": 40, "dev": 5, "test": 5}
    np.testing.assert_array_equal(np.sort(np.concatenate(list(img.values()))), np.arange(50))  # a partition
    other = load_npz(path, seed=1).modalities["image"].splits
    assert not np.array_equal(other["test"], img["test"])
    # Explicit fractions re-split.
    re = load_npz(path, split=(0.5, 0.2, 0.3)).modalities["spatial_text"].splits
    assert {s: len(i) for s, i in re.items()} == {"train": 20, "dev": 8, "test": 12}
    with pytest.raises(DataError, match="summing to 1"):
        load_npz(path, split=(0.5, 0.5, 0.5))


def test_npz_aligned_split_is_shared(tmp_path):
    data = load_npz(write_ids_npz(tmp_path / "al.npz", n_image=30, n_text=30, aligned=True))
    assert data.aligned
    for s in ("train", "dev", "test"):
        np.testing.assert_array_equal(data.modalities["image"].splits[s], data.modalities["spatial_text"].splits[s])


def test_npz_per_row_splits_and_subset(tmp_path):
    names = np.array(["train", "dev", "test", "train", "query"] * 2)
    path = tmp_path / "rows.npz"
    np.savez(path, a_features=feats(10, 2), a_labels=np.eye(2)[np.arange(10) % 2], a_split=names,
             b_features=feats(8, 2), b_labels=np.arange(8) % 2, b_split=np.array([0, 0, 0, 1, 2, 2, 3, 0]),
             c_features=feats(4, 2), c_labels=np.arange(4) % 2)
    data = load_npz(path)
    a, b = data.modalities["a"].splits, data.modalities["b"].splits
    np.testing.assert_array_equal(a["train"], [0, 3, 5, 8])
    np.testing.assert_array_equal(a["query"], [4, 9])
    np.testing.assert_array_equal(b["test"], [4, 5])
    np.testing.assert_array_equal(b["database"], [6])
    assert set(data.modalities["c"].splits) == {"train", "dev", "test"}  # seeded
    sub = load_npz(path, modalities=["b", "a"])
    assert list(sub.modalities) == ["b", "a"]
    with pytest.raises(DataError, match=r"no modality \['z'\]"):
        load_npz(path, modalities=["a", "z"])
    bad = tmp_path / "bad.npz"
    np.savez(bad, a_features=feats(2, 2), a_labels=[0, 1], a_split=np.array(["train", "val"]),
             b_features=feats(2, 2), b_labels=[0, 1])
    with pytest.raises(DataError, match=r"unknown split names \['val'\]"):
        load_npz(bad)


def test_npz_missing_pieces(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_npz(tmp_path / "nope.npz")
    np.savez(tmp_path / "nolab.npz", a_features=feats(2, 2), b_features=feats(2, 2), b_labels=[0, 1])
    with pytest.raises(DataError, match="modality 'a' has features but no a_labels"):
        load_npz(tmp_path / "nolab.npz")
    np.savez(tmp_path / "none.npz", x=np.zeros(2))
    with pytest.raises(DataError, match=r"no <modality>_features.*\['x'\]"):
        load_npz(tmp_path / "none.npz")


# --------------------------------------------------------------------------- .mat


def multi_hot(n: int, c: int, seed: int) -> np.ndarray:
    lab = (np.random.default_rng(seed).random((n, c)) < 0.3).astype(np.float64)
    lab[np.arange(n), np.arange(n) % c] = 1  # every item has a class
    return lab


def test_mat_tr_te_db_layout_with_transposed_matrix(tmp_path):
    n_tr, n_te, n_db, c = 12, 5, 20, 4
    i_tr, t_tr, l_tr = feats(n_tr, 7), feats(n_tr, 9, 1), multi_hot(n_tr, c, 0)
    i_te, t_te, l_te = feats(n_te, 7, 2), feats(n_te, 9, 3), multi_hot(n_te, c, 1)
    i_db, t_db, l_db = feats(n_db, 7, 4), feats(n_db, 9, 5), multi_hot(n_db, c, 2)
    path = tmp_path / "mir.mat"
    scipy.io.savemat(path, {"I_tr": i_tr, "T_tr": t_tr.T, "L_tr": l_tr,  # T_tr saved (D, N)
                            "I_te": i_te, "T_te": t_te, "L_te": l_te.T,   # labels saved (C, N)
                            "I_db": i_db.T, "T_db": t_db, "L_db": l_db})
    data = load_mat(path, dev_fraction=0)
    assert data.aligned and list(data.modalities) == ["image", "text"] and data.name == "mir"
    assert data.class_names == ["0", "1", "2", "3"]
    img, txt = data.modalities["image"], data.modalities["text"]
    assert img.features.shape == (n_tr + n_te + n_db, 7) and txt.features.shape == (n_tr + n_te + n_db, 9)
    assert {s: len(i) for s, i in img.splits.items()} == {"train": n_tr, "dev": 0, "test": n_te,
                                                          "database": n_db, "query": n_te}
    for split, (i, t, lab) in {"train": (i_tr, t_tr, l_tr), "test": (i_te, t_te, l_te),
                               "database": (i_db, t_db, l_db)}.items():
        x, y = data.split("image", split)
        np.testing.assert_allclose(x, i)
        np.testing.assert_array_equal(y, lab.astype(bool))
        np.testing.assert_allclose(data.split("text", split)[0], t)
    np.testing.assert_array_equal(img.splits["query"], img.splits["test"])
    # By default 10% of train is held out as dev (seeded, the same rows for both modalities).
    s = load_mat(path).modalities["image"].splits
    assert len(s["dev"]) == 1 and len(s["train"]) == n_tr - 1 and not set(s["dev"]) & set(s["train"])
    held = load_mat(path, dev_fraction=0.25)
    s = held.modalities["image"].splits
    assert len(s["dev"]) == 3 and len(s["train"]) == 9 and not set(s["dev"]) & set(s["train"])
    assert set(s["dev"]) <= set(range(n_tr))
    np.testing.assert_array_equal(held.modalities["text"].splits["dev"], s["dev"])
    np.testing.assert_array_equal(load_mat(path, dev_fraction=0.25).modalities["image"].splits["dev"], s["dev"])


def test_mat_wiki_style_class_ids_and_split_files(tmp_path):
    """Wikipedia-like: 1-based class ids saved as a row vector, labels under I_tr_labels, two files."""
    n_tr, n_te = 30, 10
    scipy.io.savemat(tmp_path / "train.mat", {"I_tr": feats(n_tr, 128), "T_tr": feats(n_tr, 10, 1),
                                              "I_tr_labels": (np.arange(n_tr) % 10 + 1).astype(float)[None]})
    scipy.io.savemat(tmp_path / "test.mat", {"I_te": feats(n_te, 128, 2), "T_te": feats(n_te, 10, 3),
                                             "I_te_labels": (np.arange(n_te) % 10 + 1)[:, None]})
    data = load_mat([tmp_path / "train.mat", tmp_path / "test.mat"], name="wiki",
                    class_names=[f"c{i}" for i in range(10)])
    assert data.name == "wiki" and data.class_names[0] == "c0"
    _, y = data.split("text", "test")
    assert y.shape == (n_te, 10) and (y.sum(1) == 1).all()
    np.testing.assert_array_equal(y.argmax(1), np.arange(n_te) % 10)  # id 1 -> column 0
    assert "database" not in data.modalities["image"].splits
    # Default names are the ids themselves.
    assert load_mat([tmp_path / "train.mat", tmp_path / "test.mat"]).class_names[:2] == ["1", "2"]
    with pytest.raises(DataError, match="key 'I_tr' is also in"):
        load_mat([tmp_path / "train.mat", tmp_path / "train.mat"])


def test_mat_xtrain_layout(tmp_path):
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"XTrain": feats(8, 4), "YTrain": feats(8, 6, 1), "trainLabel": multi_hot(8, 3, 0),
                            "XTest": feats(4, 4, 2), "YTest": feats(4, 6, 3), "testLabel": multi_hot(4, 3, 1)})
    data = load_mat(path, dev_fraction=0)
    assert data.modalities["image"].features.shape == (12, 4) and data.modalities["text"].features.shape == (12, 6)
    assert {s: len(i) for s, i in data.modalities["text"].splits.items()} == {"train": 8, "dev": 0, "test": 4}


def test_mat_all_layout_seeded_query_database(tmp_path):
    n, c = 60, 5
    lab = multi_hot(n, c, 0)
    path = tmp_path / "flickr.mat"
    scipy.io.savemat(path, {"IAll": feats(n, 16), "YAll": feats(n, 11, 1).T, "LAll": lab})  # YAll (D, N)
    data = load_mat(path, n_query=10, n_train=0.5)
    s = data.modalities["image"].splits
    assert {k: len(v) for k, v in s.items()} == {"train": 23, "dev": 2, "test": 10, "database": 50, "query": 10}
    assert set(s["dev"]) <= set(s["database"]) and not set(s["dev"]) & set(s["train"])
    assert not set(s["query"]) & set(s["database"]) and set(s["train"]) <= set(s["database"])
    assert data.modalities["text"].features.shape == (n, 11)
    np.testing.assert_array_equal(data.modalities["text"].labels, lab.astype(bool))
    again = load_mat(path, n_query=10, n_train=0.5)
    for k in s:
        np.testing.assert_array_equal(again.modalities["image"].splits[k], s[k])
    assert not np.array_equal(load_mat(path, n_query=10, n_train=0.5, seed=3).modalities["image"].splits["query"],
                              s["query"])
    with pytest.raises(DataError, match="n_query=2000 does not fit 60 items"):
        load_mat(path)  # DCMH's MIRFlickr defaults need a real-sized file


def test_mat_unknown_layout_lists_keys(tmp_path):
    path = tmp_path / "other.mat"
    scipy.io.savemat(path, {"data": feats(3, 2), "label": np.arange(3)})
    with pytest.raises(DataError, match=r"unknown \.mat layout; keys found: \['data', 'label'\]"):
        load_mat(path)


def test_mat_bad_contents(tmp_path):
    incomplete = tmp_path / "inc.mat"
    scipy.io.savemat(incomplete, {"I_tr": feats(3, 2), "T_tr": feats(3, 2), "L_tr": np.eye(3)})
    with pytest.raises(DataError, match="test split incomplete"):
        load_mat(incomplete)
    partial_db = tmp_path / "pdb.mat"
    scipy.io.savemat(partial_db, {"I_tr": feats(3, 2), "T_tr": feats(3, 2), "L_tr": np.eye(3),
                                  "I_te": feats(3, 2), "T_te": feats(3, 2), "L_te": np.eye(3), "I_db": feats(3, 2)})
    with pytest.raises(DataError, match=r"database split incomplete: needs I_db, T_db and one of L_db"):
        load_mat(partial_db)
    raw = tmp_path / "raw.mat"
    scipy.io.savemat(raw, {"IAll": np.zeros((4, 4, 3, 5)), "YAll": feats(5, 3), "LAll": np.eye(5)})
    with pytest.raises(DataError, match=r"IAll has shape \(4, 4, 3, 5\).*raw images"):
        load_mat(raw)
    widths = tmp_path / "widths.mat"
    scipy.io.savemat(widths, {"I_tr": feats(3, 2), "T_tr": feats(3, 2), "L_tr": np.eye(3),
                              "I_te": feats(3, 5), "T_te": feats(3, 2), "L_te": np.eye(3)})
    with pytest.raises(DataError, match=r"image features of the splits differ in width: \{'train': 2, 'test': 5\}"):
        load_mat(widths)
    mismatch = tmp_path / "mis.mat"
    scipy.io.savemat(mismatch, {"IAll": feats(5, 3), "YAll": feats(6, 3), "LAll": np.eye(5)})
    with pytest.raises(DataError, match="share no item count"):
        load_mat(mismatch)
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a mat file" * 20)
    with pytest.raises(DataError, match="not a readable MATLAB .mat file"):
        load_mat(junk)
    with pytest.raises(DataError, match="file not found"):
        load_mat(tmp_path / "nope.mat")


def test_mat_v73_needs_h5py(tmp_path):
    if importlib.util.find_spec("h5py") is not None:
        pytest.skip("h5py installed: v7.3 files are read, not refused")
    # A v7.3 header (HDF5 body omitted): scipy refuses it before reading further.
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116) + bytes(8) + b"\x00\x02IM"
    path = tmp_path / "v73.mat"
    path.write_bytes(header + bytes(384))
    with pytest.raises(DataError, match=r"v7\.3 \(HDF5\).*h5py.*convert"):
        load_mat(path)


# --------------------------------------------------------------------------- synthetic scenes


def nearest_class_mean(data: LabelledSet, train_mod: str, test_mod: str) -> float:
    """Accuracy on ``test_mod``'s test split of class means fit on ``train_mod``'s train split
    (multi-label: a prediction is right if it is one of the item's classes)."""
    x, y = data.split(train_mod, "train")
    means = np.stack([x[y[:, c]].mean(0) for c in range(data.n_classes)])
    xt, yt = data.split(test_mod, "test")
    pred = ((xt[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    return float(yt[np.arange(len(yt)), pred].mean())


@pytest.fixture(scope="module")
def scenes() -> LabelledSet:
    return synthetic_scenes()


def test_synthetic_shape_and_splits(scenes):
    assert list(scenes.modalities) == list(CMPLACES_MODALITIES) and not scenes.aligned
    assert scenes.n_classes == 8 and len(set(scenes.class_names)) == 8
    for mod in scenes.modalities.values():
        assert mod.features.shape == (8 * 60, 64) and mod.features.dtype == np.float32
        assert (mod.labels.sum(1) == 1).all()  # single-label
        sizes = {s: len(i) for s, i in mod.splits.items()}
        assert sizes == {"train": 8 * 42, "dev": 8 * 6, "test": 8 * 12}  # 70/10/20 of each class
        np.testing.assert_array_equal(np.sort(np.concatenate(list(mod.splits.values()))), np.arange(480))
        for idx in mod.splits.values():  # stratified: every class in every split
            assert mod.labels[idx].sum(0).min() > 0
    assert len(scenes.describe().splitlines()) == 5


def test_synthetic_deterministic(scenes):
    assert_same(scenes, synthetic_scenes())
    other = synthetic_scenes(seed=1)
    assert not np.allclose(other.modalities["photo"].features, scenes.modalities["photo"].features)
    # A modality's data depends on its name, not on which others are asked for.
    two = synthetic_scenes(modalities=("description", "photo"))
    np.testing.assert_array_equal(two.modalities["photo"].features, scenes.modalities["photo"].features)


def test_synthetic_classes_learnable_not_trivial(scenes):
    chance = 1 / scenes.n_classes
    acc = {m: nearest_class_mean(scenes, m, m) for m in scenes.modalities}
    assert min(acc.values()) > 2 * chance, acc
    assert min(acc.values()) < 1.0, acc  # noisy: not perfectly separable
    # Each modality has its own map: class means of one modality do not classify another.
    mods = list(scenes.modalities)
    cross = [nearest_class_mean(scenes, a, b) for a in mods for b in mods if a != b]
    assert np.mean(cross) < 0.5 * np.mean(list(acc.values())), (np.mean(cross), acc)
    # More noise, harder.
    noisy = synthetic_scenes(noise=3.0)
    assert np.mean([nearest_class_mean(noisy, m, m) for m in mods]) < np.mean(list(acc.values()))


def test_synthetic_options():
    data = synthetic_scenes(n_classes=20, per_class={"nat": 30, "sketch": 10}, modalities=("nat", "sketch"),
                            dim={"nat": 32, "sketch": 12}, multilabel=True, seed=4)
    assert data.class_names[-1] == "scene19"
    nat, sketch = data.modalities["nat"], data.modalities["sketch"]
    assert nat.features.shape == (600, 32) and sketch.features.shape == (200, 12)
    card = nat.labels.sum(1)
    assert set(card) == {1, 2} and 0.15 < (card == 2).mean() < 0.35
    assert nearest_class_mean(data, "nat", "nat") > 2 / 20
    assert list(with_modalities(data, ["sketch", "nat"]).modalities) == ["sketch", "nat"]
    with pytest.raises(ValueError, match="duplicate"):
        synthetic_scenes(modalities=("a", "a"))


def test_synthetic_npz_round_trip(tmp_path, scenes):
    assert_same(scenes, load_npz(save_npz(scenes, tmp_path / "scenes.npz")))


# --------------------------------------------------------------------------- Flickr8k as a labelled set

F8K_CAPTIONS = {  # 5 captions per image; labels by caption vote (2 of 5), see xmr/data/keyword_labels.py
    "1001_a.jpg": ["a dog runs", "a brown dog", "the puppy plays", "an animal outside", "something brown"],
    "1002_b.jpg": ["an abstract shape", "blue and green", "a blur", "nothing to see", "colours"],  # no class
    "1003_c.jpg": ["a man on the beach", "a man walks on sand", "a guy near the shore", "someone", "a person"],
    "2001_d.jpg": ["a cat sleeps", "a kitten", "a grey cat", "a pet", "an animal"],
    "2002_e.jpg": ["a woman rides a horse", "a horse and a woman", "a lady", "riding", "a pony"],
    "3001_f.jpg": ["a boat on the water", "a canoe on a lake", "boats", "a paddle", "calm"],
}


@pytest.fixture
def fake_flickr8k(make_flickr8k, monkeypatch):
    """A tiny Flickr8k (6 images, 5 captions each, one image without any class) with made-up
    features in place of the CNN and MiniLM: each image's a seeded vector, each caption's token
    states seeded by its text with a mask of 2-7 words. Returns the spec and the fakes' outputs."""
    import zlib

    import xmr.features.labelled as labelled
    from xmr.data import open_split

    spec = f"flickr8k:{make_flickr8k(captions=F8K_CAPTIONS)}"
    image_vec = {n: feats(1, 7, seed=i)[0] for i, n in enumerate(F8K_CAPTIONS)}
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def split_with_features(data, split, image_input, extractor, cache, progress):
        s = open_split(data, split)
        s.features = np.stack([image_vec[Path(p).name] for p in s.image_paths])
        return s

    def bert_states(captions, out, split, progress=True):
        states = np.zeros((len(captions), 8, 384), np.float16)
        mask = np.zeros((len(captions), 8), bool)
        for j, c in enumerate(captions):
            rng = np.random.default_rng(zlib.crc32(c.encode()))
            states[j] = rng.normal(size=(8, 384))
            mask[j, :2 + len(c) % 6] = True
            seen[c] = (states[j].astype(np.float32), mask[j])
        return states, mask

    monkeypatch.setattr(labelled, "split_with_features", split_with_features)
    monkeypatch.setattr(labelled, "bert_states", bert_states)
    return spec, image_vec, seen


def test_flickr8k_aligned_is_one_item_per_image_with_its_captions_mean(fake_flickr8k, tmp_path):
    from xmr.data.keyword_labels import LABEL_NAMES, keyword_labels
    from xmr.data import open_split
    from xmr.features.labelled import flickr8k_labelled

    spec, image_vec, seen = fake_flickr8k
    data = flickr8k_labelled(tmp_path, progress=False, aligned=True, data=spec)
    assert data.name == "flickr8k-aligned" and data.aligned and data.class_names == LABEL_NAMES
    image, text = data.modalities["image"], data.modalities["text"]
    assert image.n == text.n == 5  # 6 images, 1002_b has no class and is left out
    kept = [n for n in F8K_CAPTIONS if n != "1002_b.jpg"]  # split order: train, dev, test
    for s, rows in (("train", [0, 1]), ("dev", [2, 3]), ("test", [4])):
        np.testing.assert_array_equal(image.splits[s], rows)
        np.testing.assert_array_equal(text.splits[s], rows)
    np.testing.assert_array_equal(image.labels, text.labels)
    want_labels = np.concatenate([keyword_labels(open_split(spec, s)).astype(bool) for s in ("train", "dev", "test")])
    want_labels = np.delete(want_labels, 1, axis=0)  # 1002_b
    np.testing.assert_array_equal(image.labels, want_labels)
    names = {LABEL_NAMES[c] for c in np.flatnonzero(image.labels[1])}
    assert names == {"man", "beach"}  # 1003_c: man/guy in 3 captions, beach/sand/shore in 3
    for i, name in enumerate(kept):
        np.testing.assert_array_equal(image.features[i], image_vec[name])
        per_caption = [(st * m[:, None]).sum(0) / m.sum() for st, m in (seen[c] for c in F8K_CAPTIONS[name])]
        np.testing.assert_allclose(text.features[i], np.mean(per_caption, 0), rtol=1e-5, atol=1e-6)

    # The unaligned set from the same code path: one text row per caption, same images and labels;
    # the aligned text row is the mean of its image's 5 caption rows.
    flat = flickr8k_labelled(tmp_path, progress=False, data=spec)
    assert flat.name == "flickr8k" and not flat.aligned and flat.modalities["text"].n == 25
    np.testing.assert_array_equal(flat.modalities["image"].features, image.features)
    np.testing.assert_array_equal(flat.modalities["text"].labels, np.repeat(image.labels, 5, axis=0))
    np.testing.assert_allclose(flat.modalities["text"].features.reshape(5, 5, -1).mean(1), text.features,
                               rtol=1e-5, atol=1e-6)


def test_per_image_mean_and_spec_routing(monkeypatch):
    import xmr.features.labelled as labelled

    text = np.arange(12, dtype=np.float32).reshape(6, 2)
    got = labelled.per_image_mean(text, np.array([1, 0, 1, 0, 2, 1]), 3)
    np.testing.assert_allclose(got, [[4, 5], [14 / 3, 17 / 3], [8, 9]])
    with pytest.raises(ValueError, match="without captions"):
        labelled.per_image_mean(text, np.array([0, 0, 0, 0, 2, 2]), 3)
    calls = []
    monkeypatch.setattr(labelled, "flickr8k_labelled", lambda *a, aligned: calls.append(aligned))
    labelled.labelled_set("flickr8k-aligned")
    labelled.labelled_set("flickr8k")
    assert calls == [True, False]
