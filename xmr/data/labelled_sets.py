"""Class-labelled multi-modal data: the input of label-supervised models such as CMMN.

CMMN (Song & Tan 2017) learns from the class labels of each modality, not from image-sentence
pairs, and handles any number of modalities. Its datasets: Wikipedia (2,866 image-text pairs,
10 classes; 2,173 retrieval / 693 query), CMPlaces (5 modalities of 205 scene classes, *not*
aligned: each modality has its own items), COCO and, in the hashing literature, MIRFlickr and
NUS-WIDE (multi-label). A :class:`LabelledSet` holds one such dataset: per modality a
:class:`Modality` with its features, multi-hot labels and split indices.

Readers: :func:`load_npz` (xmr's own layout, written by :func:`save_npz`), :func:`load_mat`
(the MATLAB files of the public cross-modal hashing releases) and :func:`synthetic_scenes`
(a generated CMPlaces-like set: several unaligned modalities of one scene class);
:func:`open_labelled` opens one by its spec. Flickr8k as a labelled set is built from cached
features (``xmr.features.labelled``).
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from xmr.data.base import SPLITS, DataError
from xmr.options import key_values

# Split names a Modality may carry; the readers always give "train", "dev" and "test" (maybe empty).
# Per-row integer split codes in an .npz index this tuple.
SPLIT_NAMES = (*SPLITS, "database", "query")


@dataclass
class Modality:
    """One modality: ``features`` (N, D) float32, ``labels`` (N, C) bool multi-hot (one-hot for
    single-label sets), ``splits``: split name -> int64 row indices (they may overlap, e.g. a
    hashing ``database`` containing ``train``)."""

    features: np.ndarray
    labels: np.ndarray
    splits: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


@dataclass
class LabelledSet:
    """A labelled multi-modal dataset. All modalities share the classes (``class_names``).

    ``aligned``: row i of every modality is the same item (Wikipedia, MIRFlickr pairs), so pairs
    can be formed and all modalities have the same N; False for CMPlaces-style sets whose
    modalities have unrelated items that only share class labels.
    Checked and normalised (float32 features, bool labels, int64 indices) on construction.
    """

    name: str
    modalities: dict[str, Modality]
    class_names: list[str]
    aligned: bool = False

    def __post_init__(self) -> None:
        if len(self.modalities) < 2:
            raise DataError(f"{self.name}: a labelled set needs at least 2 modalities, got "
                            f"{list(self.modalities)}")
        self.class_names = [str(c) for c in self.class_names]
        n_classes = len(self.class_names)
        self.modalities = {m: self._checked(m, mod) for m, mod in self.modalities.items()}
        for m, mod in self.modalities.items():
            if mod.labels.shape[1] != n_classes:
                others = {k: v.labels.shape[1] for k, v in self.modalities.items()}
                raise DataError(f"{self.name}: modality {m!r} has labels over {mod.labels.shape[1]} classes, "
                                f"but the set has {n_classes} class names (classes per modality: {others}); "
                                "all modalities must share one class list")
        if self.aligned:
            sizes = {m: mod.n for m, mod in self.modalities.items()}
            if len(set(sizes.values())) > 1:
                raise DataError(f"{self.name}: aligned set (row i is the same item in every modality) but the "
                                f"modalities have different numbers of rows: {sizes}")

    def _checked(self, m: str, mod: Modality) -> Modality:
        where = f"{self.name}: modality {m!r}"
        feats = np.asarray(mod.features)
        if feats.ndim != 2:
            raise DataError(f"{where}: features must be (N, D), got shape {feats.shape}")
        if feats.dtype.kind not in "fiub":
            raise DataError(f"{where}: features must be numeric, got dtype {feats.dtype}")
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, refused below
            feats = np.ascontiguousarray(feats, dtype=np.float32)
        bad = ~np.isfinite(feats)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            raise DataError(f"{where}: {len(rows)} feature rows have NaN or inf values (first: row {rows[0]})")
        labels = np.asarray(mod.labels)
        if labels.ndim != 2:
            raise DataError(f"{where}: labels must be an (N, C) multi-hot matrix, got shape {labels.shape} "
                            "(convert class ids with one_hot)")
        if labels.dtype != bool:
            if labels.dtype.kind not in "fiub" or not np.isin(labels, (0, 1)).all():
                raise DataError(f"{where}: labels must be 0/1 (multi-hot), got values outside {{0, 1}}")
            labels = labels.astype(bool)
        if len(feats) != len(labels):
            raise DataError(f"{where}: {len(feats)} feature rows but {len(labels)} label rows")
        splits = {}
        for s, idx in mod.splits.items():
            idx = np.asarray(idx)
            if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
                raise DataError(f"{where}: split {s!r} must be a 1-d array of integer row indices, "
                                f"got shape {idx.shape} dtype {idx.dtype}")
            idx = idx.astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= len(feats)):
                raise DataError(f"{where}: split {s!r} has row indices out of range [0, {len(feats)}): "
                                f"min {idx.min()}, max {idx.max()}")
            splits[str(s)] = idx
        return Modality(feats, labels, splits)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def split(self, modality: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of one split of one modality."""
        if modality not in self.modalities:
            raise KeyError(f"{self.name} has no modality {modality!r}; it has {list(self.modalities)}")
        mod = self.modalities[modality]
        if name not in mod.splits:
            raise KeyError(f"{self.name}: modality {modality!r} has no split {name!r}; it has {list(mod.splits)}")
        idx = mod.splits[name]
        return mod.features[idx], mod.labels[idx]

    def describe(self) -> str:
        """One line per modality: N, D, split sizes, classes, label cardinality (labels per item)."""
        lines = []
        for m, mod in self.modalities.items():
            sizes = " ".join(f"{s}={len(i)}" for s, i in mod.splits.items())
            card = float(mod.labels.sum(1).mean()) if mod.n else 0.0
            lines.append(f"{self.name}/{m}: N={mod.n} D={mod.dim} {sizes} C={self.n_classes} "
                         f"cardinality={card:.2f}{' aligned' if self.aligned else ''}")
        return "\n".join(lines)


def one_hot(ids: np.ndarray, n_classes: int) -> np.ndarray:
    """(N,) integer class ids in [0, n_classes) -> (N, n_classes) bool one-hot."""
    ids = np.asarray(ids).reshape(-1).astype(np.int64)
    out = np.zeros((len(ids), n_classes), dtype=bool)
    out[np.arange(len(ids)), ids] = True
    return out


def _integer_ids(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)  # MATLAB saves class ids as double
    raise DataError(f"{where}: class ids must be integers, got dtype {arr.dtype}")


def seeded_split(n: int, fractions: Sequence[float], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """train/dev/test indices: a random permutation of ``range(n)`` cut by ``fractions`` (sum 1)."""
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1) > 1e-6:
        raise DataError(f"split fractions must be three non-negative numbers (train, dev, test) summing "
                        f"to 1, got {tuple(fractions)}")
    perm = rng.permutation(n).astype(np.int64)
    n_train, n_dev = round(fr[0] * n), round(fr[1] * n)
    n_dev = min(n_dev, n - n_train)
    return {"train": np.sort(perm[:n_train]), "dev": np.sort(perm[n_train:n_train + n_dev]),
            "test": np.sort(perm[n_train + n_dev:])}


def _name_key(name: str) -> int:
    # A stable per-name stream: a modality's data does not depend on which others are requested.
    return zlib.crc32(name.encode())


# --------------------------------------------------------------------------- npz


DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def load_npz(path: str | Path, *, modalities: Sequence[str] | None = None,
             split: Sequence[float] | None = None, seed: int = 0) -> LabelledSet:
    """Read a labelled set from an .npz file in xmr's layout.

    Arrays (``<mod>`` is any modality name; modalities are found by their ``_features`` key):

    - ``<mod>_features``: (N, D) float features;
    - ``<mod>_labels``: (N, C) 0/1 multi-hot, or (N,) integer class ids in [0, C) (made one-hot);
    - splits, optional: ``<mod>_split_<name>`` int row indices per split (may overlap; what
      :func:`save_npz` writes), or ``<mod>_split``: (N,) per-row split, strings
      (``train``/``dev``/``test``/``database``/``query``) or integer codes indexing that list;
    - ``class_names`` (C,) strings, optional (default ``"0"``.. ``"C-1"``; with integer ids
      C is then the largest id + 1 over all modalities);
    - ``name`` (scalar string) and ``aligned`` (scalar bool, default False), optional.

    A modality without a stored split gets a seeded 80/10/10 train/dev/test split (for an aligned
    set one permutation for all modalities, so items stay in the same split). ``split=(tr, dv, te)``
    ignores stored splits and re-splits every modality so. ``modalities`` keeps only those named.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from e
    found = [k[: -len("_features")] for k in arrays if k.endswith("_features")]
    if not found:
        raise DataError(f"{path}: no <modality>_features arrays; keys found: {sorted(arrays)}")
    if modalities is not None:
        missing = [m for m in modalities if m not in found]
        if missing:
            raise DataError(f"{path}: no modality {missing}; the file has {found}")
        found = list(modalities)
    for m in found:
        if f"{m}_labels" not in arrays:
            raise DataError(f"{path}: modality {m!r} has features but no {m}_labels array")
    aligned = bool(arrays["aligned"]) if "aligned" in arrays else False
    name = str(arrays["name"]) if "name" in arrays else path.stem

    raw = {m: np.asarray(arrays[f"{m}_labels"]) for m in found}
    if "class_names" in arrays:
        class_names = [str(c) for c in np.asarray(arrays["class_names"]).reshape(-1)]
    else:
        widths = [lab.shape[1] for lab in raw.values() if lab.ndim == 2]
        ids_max = [int(_integer_ids(lab, f"{path}: {m}_labels").max(initial=-1)) + 1
                   for m, lab in raw.items() if lab.ndim == 1]
        class_names = [str(c) for c in range(max(widths + ids_max))]
    labels = {}
    for m, lab in raw.items():
        if lab.ndim == 1:  # class ids
            ids = _integer_ids(lab, f"{path}: {m}_labels")
            if ids.size and (ids.min() < 0 or ids.max() >= len(class_names)):
                raise DataError(f"{path}: {m}_labels has class ids outside [0, {len(class_names)})")
            lab = one_hot(ids, len(class_names))
        labels[m] = lab

    n_rows = {m: len(arrays[f"{m}_features"]) for m in found}
    shared: dict[str, np.ndarray] | None = None  # aligned: one permutation for every modality
    mods = {}
    for m in found:
        splits = None if split is not None else _stored_splits(arrays, m, n_rows[m], path)
        if splits is None:
            if aligned:
                if shared is None:
                    shared = seeded_split(n_rows[m], split or DEFAULT_FRACTIONS, np.random.default_rng(seed))
                splits = dict(shared)
            else:
                splits = seeded_split(n_rows[m], split or DEFAULT_FRACTIONS,
                                      np.random.default_rng([seed, _name_key(m)]))
        for s in SPLITS:
            splits.setdefault(s, np.zeros(0, dtype=np.int64))
        mods[m] = Modality(arrays[f"{m}_features"], labels[m], splits)
    return LabelledSet(name, mods, class_names, aligned)


def _stored_splits(arrays: dict, m: str, n: int, path: Path) -> dict[str, np.ndarray] | None:
    prefix = f"{m}_split_"
    by_index = {k[len(prefix):]: np.asarray(v) for k, v in arrays.items() if k.startswith(prefix)}
    if by_index:
        return by_index  # range checks happen in LabelledSet
    if f"{m}_split" not in arrays:
        return None
    per_row = np.asarray(arrays[f"{m}_split"]).reshape(-1)
    if len(per_row) != n:
        raise DataError(f"{path}: {m}_split has {len(per_row)} entries for {n} rows")
    if per_row.dtype.kind in "iu":
        if per_row.size and (per_row.min() < 0 or per_row.max() >= len(SPLIT_NAMES)):
            raise DataError(f"{path}: {m}_split codes must be in [0, {len(SPLIT_NAMES)}) = {SPLIT_NAMES}")
        per_row = np.asarray(SPLIT_NAMES)[per_row]
    per_row = per_row.astype(str)
    unknown = sorted(str(s) for s in set(per_row) - set(SPLIT_NAMES))
    if unknown:
        raise DataError(f"{path}: {m}_split has unknown split names {unknown}; use {SPLIT_NAMES}")
    return {s: np.flatnonzero(per_row == s).astype(np.int64) for s in SPLIT_NAMES if (per_row == s).any()}


def save_npz(data: LabelledSet, path: str | Path) -> Path:
    """Write ``data`` in the :func:`load_npz` layout (splits as index arrays, so overlaps survive)."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {"name": np.asarray(data.name), "aligned": np.asarray(data.aligned),
                                     "class_names": np.asarray(data.class_names, dtype=str)}
    for m, mod in data.modalities.items():
        arrays[f"{m}_features"] = mod.features
        arrays[f"{m}_labels"] = mod.labels.astype(np.uint8)
        for s, idx in mod.splits.items():
            arrays[f"{m}_split_{s}"] = idx
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:  # a file object: np.savez would append ".npz" to other suffixes
        np.savez_compressed(fh, **arrays)
    return path


# --------------------------------------------------------------------------- MATLAB


# Layouts of the public cross-modal hashing .mat releases: (image, text, label) keys per split.
# Label keys list alternatives. Keys match case-insensitively.
MAT_SPLIT_LAYOUTS: dict[str, dict[str, tuple[str, str, tuple[str, ...]]]] = {
    # DCMH / DJSRH / SSAH-style feature releases (mir_train.mat, mir_query.mat, mir_database.mat,
    # wiki_feature.mat, nus_cnn.mat ...): train / query (te) / optional retrieval database (db).
    "tr/te": {"train": ("I_tr", "T_tr", ("L_tr", "I_tr_labels", "T_tr_labels")),
              "test": ("I_te", "T_te", ("L_te", "I_te_labels", "T_te_labels")),
              "database": ("I_db", "T_db", ("L_db", "I_db_labels", "T_db_labels"))},
    # XTrain (image) / YTrain (text) / trainLabel style.
    "XTrain": {"train": ("XTrain", "YTrain", ("trainLabel", "LTrain")),
               "test": ("XTest", "YTest", ("testLabel", "LTest")),
               "database": ("XDatabase", "YDatabase", ("databaseLabel", "LDatabase"))},
}
# MIRFlickr-25K / NUS-WIDE / IAPR releases: every item in one matrix, split here (seeded).
MAT_ALL_LAYOUT = ("IAll", "YAll", ("LAll",))


def load_mat(path: str | Path | Sequence[str | Path], *, name: str | None = None,
             class_names: Sequence[str] | None = None, seed: int = 0, n_query: int | float = 2000,
             n_train: int | float = 10000, dev_fraction: float = 0.1) -> LabelledSet:
    """Read a cross-modal hashing release's MATLAB file(s): modalities ``image`` and ``text``,
    aligned (row i of both is one item). Several files (e.g. ``mir_train.mat``, ``mir_query.mat``,
    ``mir_database.mat``) are merged; a key may appear in one file only.

    Accepted layouts (keys match case-insensitively):

    - ``I_tr, T_tr, L_tr`` (train) + ``I_te, T_te, L_te`` (query/test) [+ ``I_db, T_db, L_db``
      (retrieval database)]; labels may be named ``I_tr_labels``/``I_te_labels`` (Wikipedia
      ``wiki_feature.mat``).
    - ``XTrain, YTrain, trainLabel`` + ``XTest, YTest, testLabel`` [+ ``XDatabase, YDatabase,
      databaseLabel``]: X image, Y text.
    - ``IAll, YAll, LAll`` (MIRFlickr-25K, NUS-WIDE; YAll = tag/text features): one pool, split
      here with a seeded permutation as in DCMH: ``query`` = ``n_query`` items, ``database`` =
      the rest, ``train`` = ``n_train`` items of the database (ints, or fractions of N if < 1).

    Splits: ``train``, ``test`` (= the query set) and ``dev``: ``dev_fraction`` of the release's
    train items, held out of train with ``seed`` (the releases have no dev split; model selection
    needs one). ``dev_fraction=0`` keeps the release's whole train split (and an empty dev).
    With a database also ``query`` (same rows as ``test``) and ``database``. Rows of the
    split-wise layouts are stacked train, test, database (a database that repeats train items
    holds them twice: the files say so).

    Labels: an (N, C) 0/1 matrix, or a vector of class ids (MATLAB's 1-based ids included),
    mapped to the sorted distinct ids (class names are the ids unless ``class_names`` is given).
    Matrices saved (D, N) are transposed by matching the label count; sparse ones are densified.
    MATLAB v7.3 (HDF5) files are read with h5py if it is installed, else a DataError says how
    to convert them.
    """
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    if not paths:
        raise DataError("load_mat: no file given")
    mat: dict[str, np.ndarray] = {}
    origin: dict[str, Path] = {}  # lower-cased key -> its file
    for p in paths:
        for k, v in _read_mat(p).items():
            if k.lower() in origin:
                raise DataError(f"{p}: key {k!r} is also in {origin[k.lower()]}; which one to use is unclear")
            mat[k], origin[k.lower()] = v, p
    source = ", ".join(str(p) for p in paths)
    lower = {k.lower(): k for k in mat}

    def get(key: str | tuple[str, ...]) -> tuple[str, np.ndarray] | None:
        for k in (key,) if isinstance(key, str) else key:
            if k.lower() in lower:
                return lower[k.lower()], mat[lower[k.lower()]]
        return None

    groups: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for layout in MAT_SPLIT_LAYOUTS.values():
        if all(get(k) for k in layout["train"]):
            for split_name, keys in layout.items():
                hits = [get(k) for k in keys]
                if split_name == "database" and not any(hits):
                    continue  # optional
                if not all(hits):
                    raise DataError(f"{source}: {split_name} split incomplete: needs {keys[0]}, {keys[1]} and "
                                    f"one of {'/'.join(keys[2])}; keys found: {sorted(mat)}")
                groups[split_name] = _oriented(hits, source)
            break
    else:
        hits = [get(k) for k in MAT_ALL_LAYOUT]
        if not all(hits):
            if "images" in lower and get("YAll") and get("LAll"):
                raise DataError(f"{source}: has raw 'images' but no IAll features; extract image features "
                                "first and save them as IAll (N, D)")
            raise DataError(
                f"{source}: unknown .mat layout; keys found: {sorted(mat)}. Expected one of: "
                "I_tr/T_tr/L_tr + I_te/T_te/L_te [+ I_db/T_db/L_db]; "
                "XTrain/YTrain/trainLabel + XTest/YTest/testLabel [+ XDatabase/YDatabase/databaseLabel]; "
                "IAll/YAll/LAll")
        groups["all"] = _oriented(hits, source)

    # Class ids across all groups together, so that train and test ids map to the same columns.
    raw_labels = [g[2] for g in groups.values()]
    if raw_labels[0].ndim == 1:
        if any(lab.ndim != 1 for lab in raw_labels):
            raise DataError(f"{source}: some splits give class ids, others label matrices")
        ids = [_integer_ids(lab, source) for lab in raw_labels]
        classes = np.unique(np.concatenate(ids))
        labels = [one_hot(np.searchsorted(classes, i), len(classes)) for i in ids]
        default_names = [str(c) for c in classes]
    else:
        widths = {lab.shape[1] for lab in raw_labels}
        if len(widths) > 1:
            raise DataError(f"{source}: label matrices of the splits have different class counts {sorted(widths)}")
        labels = raw_labels
        default_names = [str(c) for c in range(widths.pop())]
    names = list(class_names) if class_names is not None else default_names
    if len(names) != len(default_names):
        raise DataError(f"{source}: {len(names)} class names for {len(default_names)} classes")

    for j, modality in ((0, "image"), (1, "text")):
        widths = {s: g[j].shape[1] for s, g in groups.items()}
        if len(set(widths.values())) > 1:
            raise DataError(f"{source}: {modality} features of the splits differ in width: {widths}")
    image = np.concatenate([g[0] for g in groups.values()])
    text = np.concatenate([g[1] for g in groups.values()])
    label = np.concatenate(labels)
    rng = np.random.default_rng(seed)
    if "all" in groups:
        splits = _query_database_split(len(image), n_query, n_train, rng, source)
    else:
        splits, start = {}, 0
        for split_name, g in groups.items():
            splits[split_name] = np.arange(start, start + len(g[0]), dtype=np.int64)
            start += len(g[0])
        if "database" in splits:
            splits["query"] = splits["test"]
    if not 0 <= dev_fraction < 1:
        raise DataError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    train = rng.permutation(splits["train"])
    n_dev = round(dev_fraction * len(train))
    splits["train"], splits["dev"] = np.sort(train[n_dev:]), np.sort(train[:n_dev])
    splits = {s: splits[s] for s in (*SPLITS, "database", "query") if s in splits}
    mods = {"image": Modality(image, label, splits), "text": Modality(text, label, dict(splits))}
    return LabelledSet(name or paths[0].stem, mods, names, aligned=True)


def _read_mat(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    import scipy.io  # lazily: only .mat users need scipy

    try:
        raw = scipy.io.loadmat(path)
    except NotImplementedError:  # scipy's answer to v7.3 files: they are HDF5
        return _read_mat_hdf5(path)
    except (ValueError, TypeError, OSError) as e:
        raise DataError(f"{path}: not a readable MATLAB .mat file ({e})") from e
    out = {}
    for k, v in raw.items():
        if k.startswith("__"):
            continue  # __header__, __version__, __globals__
        out[k] = v.toarray() if hasattr(v, "toarray") else v  # sparse tag/BoW matrices
    return out


def _read_mat_hdf5(path: Path) -> dict[str, np.ndarray]:
    try:
        import h5py
    except ImportError:
        raise DataError(
            f"{path}: MATLAB v7.3 (HDF5) file, which scipy cannot read. Install h5py to read it, or "
            "convert it once: in MATLAB `save(out, '-struct', 'S', '-v7')`, or in Python "
            "`with h5py.File(path) as f: scipy.io.savemat(out, {k: f[k][()].T for k in f if not "
            "k.startswith('#')})`") from None
    out = {}
    with h5py.File(path, "r") as f:
        for k, v in f.items():
            if isinstance(v, h5py.Dataset) and not k.startswith("#"):
                # HDF5 stores MATLAB's column-major arrays with reversed dims; restore MATLAB's shape.
                out[k] = np.asarray(v[()]).T
    return out


def _oriented(hits: list[tuple[str, np.ndarray]], source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (N, D), text (N, D'), labels (N, C) or (N,)) with N found from the label matrix:
    MATLAB releases often store matrices as (D, N)."""
    (ik, img), (tk, txt), (lk, lab) = [(k, np.asarray(v)) for k, v in hits]
    for k, a in ((ik, img), (tk, txt)):
        if a.ndim != 2:
            raise DataError(f"{source}: {k} has shape {a.shape}; expected an (N, D) feature matrix"
                            + (" (raw images: extract features first)" if a.ndim > 2 else ""))
    if lab.ndim != 2 and lab.ndim != 1:
        raise DataError(f"{source}: {lk} has shape {lab.shape}; expected (N, C) labels or N class ids")
    is_ids = lab.ndim == 1 or 1 in lab.shape
    candidates = [lab.size] if is_ids else list(lab.shape)
    n = next((c for c in candidates if c in img.shape and c in txt.shape), None)
    if n is None:
        raise DataError(f"{source}: cannot match rows: {ik} {img.shape}, {tk} {txt.shape}, {lk} {lab.shape} "
                        "share no item count")
    if is_ids:
        lab = lab.reshape(-1)
    elif lab.shape[0] != n:
        lab = lab.T
    img = img if img.shape[0] == n else img.T
    txt = txt if txt.shape[0] == n else txt.T
    return img, txt, lab


def _count(value: int | float, n: int, what: str, source: str) -> int:
    k = round(value * n) if isinstance(value, float) and value < 1 else int(value)
    if not 0 < k <= n:
        raise DataError(f"{source}: {what}={value} does not fit {n} items")
    return k


def _query_database_split(n: int, n_query: int | float, n_train: int | float, rng: np.random.Generator,
                          source: str) -> dict[str, np.ndarray]:
    q = _count(n_query, n, "n_query", source)
    if q >= n:
        raise DataError(f"{source}: n_query={n_query} leaves no database among {n} items")
    t = _count(n_train, n - q, "n_train", source)
    perm = rng.permutation(n).astype(np.int64)
    query, database = np.sort(perm[:q]), perm[q:]
    return {"train": np.sort(database[:t]), "test": query, "database": np.sort(database), "query": query}


# --------------------------------------------------------------------------- synthetic


SCENE_NAMES = ["kitchen", "beach", "forest", "street", "bedroom", "mountain", "office", "harbor",
               "desert", "library", "stadium", "airport", "farm", "bridge", "church", "market"]
CMPLACES_MODALITIES = ("photo", "drawing", "clipart", "spatial_text", "description")
LATENT = 16           # dimension of the latent "scene" shared by all modalities
WITHIN_CLASS = 0.7    # spread of one class's scenes around its prototype (latent units)
SECOND_LABEL_RATE = 0.25  # multilabel=True: share of items that show a second class
SYNTH_FRACTIONS = (0.7, 0.1, 0.2)


def synthetic_scenes(n_classes: int = 8, per_class: int | Mapping[str, int] = 60,
                     modalities: Sequence[str] = CMPLACES_MODALITIES, dim: int | Mapping[str, int] = 64,
                     noise: float = 1.0, seed: int = 0, multilabel: bool = False) -> LabelledSet:
    """A generated CMPlaces-like set: several modalities of scenes of ``n_classes`` classes, not
    aligned (each modality has its own ``n_classes * per_class`` items; ``per_class`` may differ
    per modality, as CMPlaces' sizes do), single-label unless ``multilabel``.

    Each class has a latent prototype; an item is its prototype plus within-class variation.
    Each modality renders latents through its own fixed random nonlinear map,
    ``tanh(z A + b) B``, plus modality-specific noise (``noise`` times a per-modality factor in
    [0.6, 1.4]), so features of different modalities are not comparable (a per-modality network
    is needed) and classes overlap (learnable, not trivially). ``dim``: feature width, one for
    all or per modality. ``multilabel=True``: about a quarter of the items mix a second class's
    prototype in and carry both labels. Splits per modality and class: 70/10/20 train/dev/test.
    Deterministic in ``seed``; a modality's data depends only on its name, not on the others.
    """
    sizes = {m: int(per_class[m] if isinstance(per_class, Mapping) else per_class) for m in modalities}
    if n_classes < 2 or min(sizes.values(), default=1) < 1:
        raise ValueError(f"need n_classes >= 2 and per_class >= 1, got {n_classes}, {per_class}")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"duplicate modality names in {list(modalities)}")
    protos = np.random.default_rng([seed, 0]).normal(size=(n_classes, LATENT))
    names = [SCENE_NAMES[c] if c < len(SCENE_NAMES) else f"scene{c}" for c in range(n_classes)]
    mods = {}
    for m in modalities:
        d = dim[m] if isinstance(dim, Mapping) else int(dim)
        key = _name_key(m)
        mrng = np.random.default_rng([seed, 1, key])  # the modality's fixed "renderer"
        a = mrng.normal(size=(LATENT, d)) * (1.5 / np.sqrt(LATENT))  # gain 1.5: tanh partly saturates
        b = mrng.normal(size=d) * 0.5
        mix = mrng.normal(size=(d, d)) / np.sqrt(d)
        scale = noise * mrng.uniform(0.6, 1.4)

        irng = np.random.default_rng([seed, 2, key])  # the modality's items
        n = n_classes * sizes[m]
        primary = irng.permutation(np.repeat(np.arange(n_classes), sizes[m]))
        labels = one_hot(primary, n_classes)
        z = protos[primary].copy()
        if multilabel:
            two = irng.random(n) < SECOND_LABEL_RATE
            second = (primary + irng.integers(1, n_classes, size=n)) % n_classes
            z[two] = (protos[primary[two]] + protos[second[two]]) / np.sqrt(2)
            labels[np.flatnonzero(two), second[two]] = True
        z += irng.normal(size=(n, LATENT)) * WITHIN_CLASS
        feats = np.tanh(z @ a + b) @ mix + irng.normal(size=(n, d)) * scale

        # Stratified by primary class: each class contributes 70/10/20 of its items.
        parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for c in range(n_classes):
            rows = np.flatnonzero(primary == c)  # already in random order
            n_tr, n_dv = round(SYNTH_FRACTIONS[0] * len(rows)), round(SYNTH_FRACTIONS[1] * len(rows))
            for s, chunk in zip(SPLITS, np.split(rows, [n_tr, n_tr + n_dv])):
                parts[s].append(chunk)
        splits = {s: np.sort(np.concatenate(v)).astype(np.int64) for s, v in parts.items()}
        mods[m] = Modality(feats.astype(np.float32), labels, splits)
    return LabelledSet(f"synthetic-scenes-{seed}", mods, names, aligned=False)


def with_modalities(data: LabelledSet, keep: Sequence[str]) -> LabelledSet:
    """The set restricted to the modalities ``keep`` (in that order)."""
    missing = [m for m in keep if m not in data.modalities]
    if missing:
        raise KeyError(f"{data.name} has no modality {missing}; it has {list(data.modalities)}")
    return replace(data, modalities={m: data.modalities[m] for m in keep})


def open_labelled(data: str, seed: int = 0) -> LabelledSet:
    """``synthetic-scenes[,KEY=VALUE...]`` (options of ``synthetic_scenes``, e.g. noise=2,multilabel=true;
    ``seed`` unless an option gives one) or a ``.npz`` / ``.mat`` file."""
    name, *options = data.split(",")
    if name == "synthetic-scenes":
        kwargs = {"seed": seed, **key_values(
            options, lambda option: ValueError(f"labelled data {data!r}: option {option!r} is not KEY=VALUE"))}
        try:
            return synthetic_scenes(**kwargs)
        except TypeError as e:
            raise ValueError(f"labelled data {data!r}: {e}") from e
    path = Path(data)
    if path.suffix == ".npz":
        return load_npz(path)
    if path.suffix == ".mat":
        return load_mat(path)
    raise ValueError(f"labelled data {data!r}: use synthetic-scenes[,KEY=VALUE...], flickr8k, flickr8k-aligned, or a .npz / .mat file")
