"""COCO captions JSON (``annotations/captions_{train,val}{2014,2017}.json``) plus an image folder.

Split names are the files' own (``train2017``, ``val2014``, ...); ``train`` resolves to the train
file and ``dev``/``test`` to the val file, since COCO publishes no test captions. That makes dev
and test *the same images*: model selection would then use the test set, so reading ``dev`` or
``test`` from the same file as the other warns on stderr (use the Karpathy split,
``karpathy:dataset_coco.json``, for separate val/test sets).

The path is the folder holding ``captions_*.json`` (or its ``annotations/`` subfolder), or one
``captions_<name>.json`` file itself (its folder then serves the other splits). Images: ``images=DIR``
is either the folder of one split's images or a folder with one subfolder per file name
(``DIR/train2017``, ``DIR/val2017``, as COCO unpacks); without it, ``<root>/<name>/``.
"""
from __future__ import annotations

import json
from pathlib import Path

from xmr.data.base import CAPTIONS_PER_IMAGE, DataError, Split, group_captions
from xmr.data.text import check_caption

ALIASES = {"train": ("train2017", "train2014"), "dev": ("val2017", "val2014"), "test": ("val2017", "val2014")}


def _find_annotation(root: Path, split: str) -> tuple[str, Path]:
    if root.is_file():  # the captions JSON itself
        given = root.name.removeprefix("captions_").removesuffix(".json")
        if not (root.name.startswith("captions_") and root.suffix == ".json"):
            raise DataError(f"{root}: a COCO captions file is named captions_<split>.json "
                            "(e.g. captions_val2017.json); give that file or the folder holding it")
        if given == split or given in ALIASES.get(split, ()):
            return given, root
        root = root.parent
    elif not root.is_dir():
        raise DataError(f"{root}: COCO annotations folder or captions_<split>.json file not found")
    for name in (split, *ALIASES.get(split, ())):
        for f in (root / f"captions_{name}.json", root / "annotations" / f"captions_{name}.json"):
            if f.is_file():
                return name, f
    alias = " or ".join(f"captions_{a}.json" for a in ALIASES.get(split, ()))
    raise DataError(f"{root}: no captions_{split}.json{' (' + alias + ')' if alias else ''} here or in "
                    f"{root / 'annotations'}; give the folder of COCO's captions_*.json files or one of them")


def read_coco(root: str | Path, split: str, images: str | Path | None = None,
              captions_per_image: int = CAPTIONS_PER_IMAGE) -> Split:
    root = Path(root)
    name, ann_file = _find_annotation(root, split)
    image_entries, annotations = _read_annotation_file(ann_file)
    _warn_if_dev_is_test(root, split, ann_file)
    base = ann_file.parent.parent if ann_file.parent.name == "annotations" else ann_file.parent
    image_root = _image_root(Path(images), name) if images is not None else base / name
    file_of = _image_files(image_entries, ann_file)
    pairs = [_caption_pair(a, n, ann_file) for n, a in enumerate(annotations)]
    # COCO images have 5-7 captions; keep images with at least k, in image-list order.
    counts: dict[str, int] = {}
    for image_id, _ in pairs:
        counts[image_id] = counts.get(image_id, 0) + 1
    order = [i for i in file_of if counts.get(i, 0) >= captions_per_image]
    if not order:
        raise DataError(f"{ann_file}: no image has {captions_per_image} captions")
    if len(order) < len(file_of):
        import sys

        print(f"{ann_file}: left out {len(file_of) - len(order)} of {len(file_of)} images with fewer than "
              f"{captions_per_image} captions", file=sys.stderr)
    captions = group_captions(pairs, order, captions_per_image, str(ann_file))
    return Split(split, order, captions, captions_per_image,
                 image_paths=[image_root / file_of[i] for i in order])


def _read_annotation_file(ann_file: Path) -> tuple[list, list]:
    """``images`` and ``annotations`` of a captions file, checked to be lists (errors name the field)."""
    try:
        data = json.loads(ann_file.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{ann_file}: not a COCO captions file (not UTF-8 JSON: {e})") from e
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: not a COCO captions file (the top level is a {type(data).__name__}, "
                        "expected an object with 'images' and 'annotations')")
    for field in ("images", "annotations"):
        if field not in data:
            raise DataError(f"{ann_file}: not a COCO captions file (no {field!r} list)")
        if not isinstance(data[field], list):
            raise DataError(f"{ann_file}: not a COCO captions file ({field!r} is a {type(data[field]).__name__}, "
                            "expected a list)")
    return data["images"], data["annotations"]


def _image_files(entries: list, ann_file: Path) -> dict[str, str]:
    """image id -> file name, refusing malformed entries and duplicate ids (which would pair one
    image's captions with another's file)."""
    file_of: dict[str, str] = {}
    for n, im in enumerate(entries):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise DataError(f"{ann_file}: images[{n}] needs an 'id' and a string 'file_name'")
        key = str(im["id"])
        if key in file_of:
            raise DataError(f"{ann_file}: images[{n}]: duplicate image id {im['id']!r} "
                            f"({file_of[key]} and {im['file_name']}); each image needs its own id")
        file_of[key] = im["file_name"]
    return file_of


def _caption_pair(a, n: int, ann_file: Path) -> tuple[str, str]:
    if not isinstance(a, dict) or "image_id" not in a or "caption" not in a:
        raise DataError(f"{ann_file}: annotations[{n}] needs an 'image_id' and a 'caption'")
    where = f"{ann_file}: annotation {a.get('id', f'[{n}]')}"
    if not isinstance(a["caption"], str):
        raise DataError(f"{where}: 'caption' is {a['caption']!r}, expected a string")
    return str(a["image_id"]), check_caption(a["caption"], where)


def _image_root(images: Path, name: str) -> Path:
    """``images=DIR``: DIR/<name>/ when DIR holds one folder per split (COCO's layout), else DIR."""
    return images / name if (images / name).is_dir() else images


def _warn_if_dev_is_test(root: Path, split: str, ann_file: Path) -> None:
    if split not in ("dev", "test"):
        return
    other = "test" if split == "dev" else "dev"
    try:
        same = _find_annotation(root, other)[1] == ann_file
    except DataError:
        return
    if same:
        import sys

        print(f"warning: COCO {split} and {other} are both {ann_file.name} (COCO publishes no test captions): "
              "model selection on dev would use the test images; for separate val/test splits use "
              "karpathy:dataset_coco.json", file=sys.stderr)
