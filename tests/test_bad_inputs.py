"""The bad-input corpus: each case writes one bad file or value into a valid tiny dataset / run /
index (generated here, nothing downloaded) and runs the ``xmr`` command on it in-process. Every
case must end in exactly one line on stderr, ``xmr: error: ...``, naming the file or field at
fault, a non-zero exit and no traceback; never a wrong result. docs/bad-inputs.md lists the classes."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from xmr.cli import main

from bad_input_data import tiny_train_args, write_precomputed


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid precomputed dataset, a trained 1-epoch run on it and an index of its test split."""
    tmp = tmp_path_factory.mktemp("good")
    data = write_precomputed(tmp / "data")
    spec = f"precomputed:{data}"
    assert main(tiny_train_args(spec, tmp / "run", tmp / "cache")) == 0
    assert main(["index", "build", str(tmp / "run"), "--data", spec, "--split", "test",
                 "--out", str(tmp / "index"), "--cache", str(tmp / "cache"), "--quiet"]) == 0
    return tmp


def copy_data(good, tmp_path):
    return shutil.copytree(good / "data", tmp_path / "data")


def copy_run(good, tmp_path):
    return shutil.copytree(good / "run", tmp_path / "run")


def truncate(path, keep=0.5):
    b = path.read_bytes()
    path.write_bytes(b[: int(len(b) * keep)])


def _csv_case(content: bytes):
    def setup(good, tmp):
        (tmp / "csv").mkdir()
        (tmp / "csv" / "train.csv").write_bytes(content)
        return ["data", f"csv:{tmp / 'csv'}", "--splits", "train", "--no-images"]
    return setup


# Each case: (id, setup(good, tmp) -> argv, pattern the one line must contain).
def _data_case(mutate, split="train", cmd="data"):
    def setup(good, tmp):
        d = copy_data(good, tmp)
        mutate(d)
        if cmd == "data":
            return ["data", f"precomputed:{d}", "--splits", split]
        return tiny_train_args(f"precomputed:{d}", tmp / "r", tmp / "c")
    return setup


def _coco_case(mutate_json, split="dev"):
    def setup(good, tmp):
        anns = [{"id": 10 * i + j, "image_id": i, "caption": f"picture {i} number {j}"} for i in range(2) for j in range(5)]
        data = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(2)], "annotations": anns}
        data = mutate_json(data)
        (tmp / "coco").mkdir()
        text = data if isinstance(data, (str, bytes)) else json.dumps(data)
        (tmp / "coco" / "captions_val2017.json").write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["data", f"coco:{tmp / 'coco'}", "--splits", split, "--no-images"]
    return setup


def _set_case(*sets):
    def setup(good, tmp):
        return tiny_train_args(f"precomputed:{good / 'data'}", tmp / "r", tmp / "c", *[a for s in sets for a in ("--set", s)])
    return setup


def _run_case(mutate, cmd="eval"):
    def setup(good, tmp):
        r = copy_run(good, tmp)
        mutate(r)
        if cmd == "resume":
            return tiny_train_args(f"precomputed:{good / 'data'}", r, tmp / "c", "--resume", "--set", "epochs=2")
        return ["eval", str(r), "--data", f"precomputed:{good / 'data'}", "--cache", str(tmp / "c")]
    return setup


def _meta(edit):
    def mutate(r):
        m = json.loads((r / "best.json").read_text())
        edit(m)
        (r / "best.json").write_text(json.dumps(m))
    return mutate


def _index_case(mutate):
    def setup(good, tmp):
        ix = shutil.copytree((good / "index").resolve(), tmp / "index")
        mutate(ix)
        return ["search", str(ix), "a dog"]
    return setup


def _flickr_case(mutate, cmd="data"):
    """A 3/2/1-image Flickr8k layout in ``tmp``, changed by ``mutate(root)``, read by ``cmd``."""
    def setup(good, tmp):
        from PIL import Image

        root, names = tmp / "f8k", {"train": ["a.jpg", "b.jpg", "c.jpg"], "dev": ["d.jpg", "e.jpg"], "test": ["f.jpg"]}
        (root / "Flickr8k_text").mkdir(parents=True)
        (root / "Flicker8k_Dataset").mkdir()
        lines = []
        for i, n in enumerate(n for ns in names.values() for n in ns):
            Image.new("RGB", (16, 16), (40 * i, 90, 150)).save(root / "Flicker8k_Dataset" / n)
            lines += [f"{n}#{j}\t{n} caption {j}\n" for j in range(5)]
        (root / "Flickr8k_text" / "Flickr8k.token.txt").write_text("".join(lines))
        for split, ns in names.items():
            (root / "Flickr8k_text" / f"Flickr_8k.{split}Images.txt").write_text("".join(n + "\n" for n in ns))
        mutate(root)
        if cmd == "data":
            return ["data", f"flickr8k:{root}", "--splits", "train", "dev", "test"]
        if cmd == "features":
            return ["features", f"flickr8k:{root}", "--cache", str(tmp / "c"), "--quiet"]
        return tiny_train_args(f"flickr8k:{root}", tmp / "r", tmp / "c")
    return setup


def _image_is_a_folder(root):
    (root / "Flicker8k_Dataset" / "b.jpg").unlink()
    (root / "Flicker8k_Dataset" / "b.jpg").mkdir()


def _npy(split, arr):
    return lambda d: np.save(d / f"{split}_ims.npy", arr)


CASES = [
    # feature files
    ("npy-zero-byte", _data_case(lambda d: (d / "train_ims.npy").write_bytes(b"")), r"train_ims\.npy: .*empty"),
    ("npy-garbage", _data_case(lambda d: (d / "train_ims.npy").write_bytes(b"garbage" * 30)), r"train_ims\.npy: .*no NPY header"),
    ("npy-pickled-object", _data_case(lambda d: np.save(d / "train_ims.npy", np.array([{}], dtype=object), allow_pickle=True)),
     r"train_ims\.npy: .*(object|pickled)"),
    ("npy-truncated", _data_case(lambda d: truncate(d / "train_ims.npy")), r"train_ims\.npy: .*truncated"),
    ("npy-N-by-0", _data_case(_npy("train", np.zeros((12, 0), np.float32))), r"train_ims\.npy: .*\(12, 0\)"),
    ("npy-0-rows", _data_case(_npy("train", np.zeros((0, 8), np.float32))), r"train_ims\.npy: .*no rows"),
    ("npy-N-0-D-regions", _data_case(_npy("train", np.zeros((12, 0, 8), np.float32))), r"train_ims\.npy: .*\(12, 0, 8\)"),
    ("npy-nan", _data_case(_npy("train", np.full((12, 8), np.nan, np.float32))), r"train_ims\.npy: row 0 has NaN"),
    ("npy-int", _data_case(_npy("train", np.ones((12, 8), np.int32))), r"train_ims\.npy: features must be float"),
    ("npy-1d", _data_case(_npy("train", np.ones(12, np.float32))), r"train_ims\.npy: features must be \(N, D\)"),
    ("width-train-vs-dev", _data_case(_npy("dev", np.ones((4, 6), np.float32)), cmd="train"), r"8-d but dev features 6-d"),
    ("caps-fewer-lines", _data_case(lambda d: (d / "train_caps.txt").write_text("one\ntwo\n")), r"train_ims\.npy has 12 rows but train_caps\.txt has 2"),
    ("caps-blank-inside", _data_case(lambda d: (d / "train_caps.txt").write_text("a\n\nb\n")), r"train_caps\.txt:2: empty caption"),
    ("caps-latin1", _data_case(lambda d: (d / "train_caps.txt").write_bytes(b"caf\xe9\n")), r"train_caps\.txt:1: invalid UTF-8"),
    ("ids-duplicate", _data_case(lambda d: (d / "train_ids.txt").write_text("x\n" * 12)), r"image 'x' is listed twice"),
    ("ids-count", _data_case(lambda d: (d / "train_ids.txt").write_text("x\ny\n")), r"train_ids\.txt: 2 image ids for 12"),
    ("train-dev-overlap", _data_case(lambda d: (d / "dev_ids.txt").write_text("".join(f"train-{i}.jpg\n" for i in range(4))), cmd="train"),
     r"splits 'train' and 'dev' share 4 image"),
    ("flickr8k-empty-split-list", _flickr_case(lambda r: (r / "Flickr8k_text" / "Flickr_8k.devImages.txt").write_text("\n")),
     r"Flickr_8k\.devImages\.txt: lists no images"),
    ("flickr8k-empty-split-train", _flickr_case(lambda r: (r / "Flickr8k_text" / "Flickr_8k.devImages.txt").write_text(""),
                                                cmd="train"), r"Flickr_8k\.devImages\.txt: lists no images"),
    ("image-is-a-folder", _flickr_case(_image_is_a_folder, cmd="features"), r"b\.jpg: is a folder, not an image file"),
    ("split-missing", _data_case(lambda d: (d / "dev_ims.npy").unlink(), split="dev"), r"dev_ims\.npy: feature file not found"),
    # dataset specs
    ("spec-unknown-kind", lambda g, t: ["data", "flickr30k:/x"], r"unknown dataset kind 'flickr30k'"),
    ("spec-unknown-option", lambda g, t: ["data", f"precomputed:{g / 'data'},image=x"], r"option 'image' .* precomputed takes captions_per_image"),
    ("spec-option-not-int", lambda g, t: ["data", "synthetic,n_train=abc"], r"n_train='abc' .* whole number"),
    ("spec-no-path", lambda g, t: ["data", "coco"], r"'coco' needs a path"),
    # COCO captions files
    ("coco-caption-null", _coco_case(lambda d: (d["annotations"][0].update(caption=None), d)[1]), r"annotation 0: 'caption' is None"),
    ("coco-caption-number", _coco_case(lambda d: (d["annotations"][0].update(caption=7), d)[1]), r"annotation 0: 'caption' is 7"),
    ("coco-annotations-dict", _coco_case(lambda d: {**d, "annotations": {}}), r"'annotations' is a dict, expected a list"),
    ("coco-images-int", _coco_case(lambda d: {**d, "images": 3}), r"'images' is a int, expected a list"),
    ("coco-top-level-list", _coco_case(lambda d: [d]), r"top level is a list"),
    ("coco-no-image-id", _coco_case(lambda d: (d["annotations"][3].pop("image_id"), d)[1]), r"annotations\[3\] needs an 'image_id'"),
    ("coco-duplicate-id", _coco_case(lambda d: {**d, "images": d["images"] + [{"id": 1, "file_name": "other.jpg"}]}),
     r"duplicate image id 1"),
    ("coco-not-json", _coco_case(lambda d: "{not json"), r"captions_val2017\.json: not a COCO captions file"),
    ("coco-wrong-file-name", lambda g, t: ((t / "c.json").write_text("{}"), ["data", f"coco:{t / 'c.json'}"])[1],
     r"c\.json: a COCO captions file is named captions_<split>\.json"),
    ("coco-missing-train", _coco_case(lambda d: d, split="train"), r"no captions_train\.json \(captions_train2017\.json"),
    # --set values and CLI values
    ("set-batch-size-0", _set_case("batch_size=0"), r"--set batch_size=0: must be a whole number >= 1"),
    ("set-epochs-abc", _set_case("epochs=abc"), r"--set epochs='abc': must be a whole number"),
    ("set-embed-dim-negative", _set_case("embed_dim=-5"), r"--set: embed_dim=-5 must be from 1"),
    ("set-embed-dim-huge", _set_case("embed_dim=10000000000000"), r"embed_dim=10000000000000 must be from 1"),
    ("set-lr-nan", _set_case("lr=NaN"), r"--set lr=nan: must be a finite number"),
    ("set-unknown-key", _set_case("embed_dims=5"), r"--set embed_dims: not a training setting"),
    ("set-no-equals", _set_case("epochs"), r"--set 'epochs': expected KEY=VALUE"),
    ("set-batch-too-big", _set_case("batch_size=100000"), r"batch size 100000 is larger than the 60 training pairs"),
    ("eval-folds-0", lambda g, t: ["eval", str(g / "run"), "--folds", "0"], r"--folds 0: need a whole number >= 1"),
    ("eval-folds-too-many", lambda g, t: ["eval", str(g / "run"), "--folds", "7", "--cache", str(t)], r"4 images do not split into 7|more folds"),
    ("eval-width-mismatch", lambda g, t: ["eval", str(g / "run"), "--data",
                                          f"precomputed:{write_precomputed(t / 'd6', dim=6)}", "--cache", str(t)],
     r"trained on 8-d image features but .* has 6-d"),
    # checkpoints
    ("ckpt-safetensors-zero", _run_case(lambda r: (r / "best.safetensors").write_bytes(b"")), r"best\.safetensors: unreadable safetensors file \(0 bytes"),
    ("ckpt-safetensors-garbage", _run_case(lambda r: (r / "best.safetensors").write_bytes(b"x" * 100)), r"best\.safetensors: unreadable safetensors"),
    ("ckpt-safetensors-truncated", _run_case(lambda r: truncate(r / "best.safetensors")), r"best\.safetensors: unreadable safetensors"),
    ("ckpt-safetensors-missing", _run_case(lambda r: (r / "best.safetensors").unlink()), r"best\.safetensors: checkpoint weights not found"),
    ("ckpt-json-list", _run_case(lambda r: (r / "best.json").write_text("[1, 2]")), r"best\.json: not an xmr checkpoint \(a JSON list"),
    ("ckpt-json-garbage", _run_case(lambda r: (r / "best.json").write_text("{oops")), r"best\.json: not valid JSON"),
    ("ckpt-other-model", _run_case(_meta(lambda m: m.update(model="mmca"))), r"mmca takes no argument|checkpoint is for model 'mmca'"),
    ("ckpt-unknown-model", _run_case(_meta(lambda m: m.update(model="vse-pp"))), r"best\.json: unknown model 'vse-pp'"),
    ("ckpt-unknown-kwarg", _run_case(_meta(lambda m: m["model_kwargs"].update(embed_dimm=5))), r"vsepp takes no argument 'embed_dimm'.*embed_dim"),
    ("ckpt-huge-dim", _run_case(_meta(lambda m: m["model_kwargs"].update(embed_dim=10 ** 13))), r"embed_dim=10000000000000 must be from 1"),
    ("ckpt-no-model-kwargs", _run_case(_meta(lambda m: m.pop("model_kwargs"))), r"best\.json: checkpoint metadata has no 'model_kwargs' field"),
    ("ckpt-kwarg-wrong-type", _run_case(_meta(lambda m: m["model_kwargs"].update(embed_dim="big"))), r"embed_dim='big' must be a whole number"),
    ("resume-truncated-last", _run_case(lambda r: truncate(r / "last.safetensors"), cmd="resume"), r"last\.safetensors: unreadable safetensors"),
    ("resume-other-data", lambda g, t: (copy_run(g, t), tiny_train_args(f"precomputed:{t}", t / "run", t / "c", "--resume"))[1],
     r"--resume: .* was trained with --data"),
    ("resume-other-seed", lambda g, t: (copy_run(g, t), tiny_train_args(f"precomputed:{g / 'data'}", t / "run", t / "c", "--resume",
                                                                        "--seed", "4"))[1], r"trained with --seed 0, not 4"),
    ("resume-other-model", lambda g, t: (copy_run(g, t), [a if a != "vsepp" else "jgcar" for a in tiny_train_args(
        f"precomputed:{g / 'data'}", t / "run", t / "c", "--resume")])[1],
     r"trained with --model vsepp, not jgcar"),
    # indexes
    ("index-faiss-truncated", _index_case(lambda ix: truncate(ix / "images.faiss")), r"images\.faiss: unreadable faiss index"),
    ("index-faiss-zero", _index_case(lambda ix: (ix / "images.faiss").write_bytes(b"")), r"images\.faiss: unreadable faiss index"),
    ("index-faiss-missing", _index_case(lambda ix: (ix / "images.faiss").unlink()), r"images\.faiss: index file missing"),
    ("index-items-garbage", _index_case(lambda ix: (ix / "items.json").write_text("{")), r"items\.json: unreadable"),
    ("index-not-an-index", lambda g, t: ["search", str(t), "a dog"], r"not an xmr index"),
    ("search-empty-query", lambda g, t: ["search", str(g / "index"), ""], r"empty query"),
    # open_clip CSV (xmr/data/csv_reader.py)
    ("csv-no-caption-column", _csv_case(b"filepath,text\na.jpg,x\n"), r"train\.csv:1: no 'caption' column"),
    ("csv-field-count", _csv_case(b"filepath,caption\na.jpg,x,y\n"), r"train\.csv:2: 3 fields, the header has 2"),
    ("csv-invalid-utf8", _csv_case(b"filepath,caption\na.jpg,caf\xe9\n"), r"train\.csv:2: invalid UTF-8"),
]


@pytest.mark.parametrize("name, setup, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line(good, tmp_path, capsys, name, setup, pattern):
    import re

    argv = setup(good, tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse-level and SystemExit("message") errors
        code = e.code if isinstance(e.code, int) else 2
        if not isinstance(e.code, int):
            print(e.code, file=__import__("sys").stderr)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert code not in (0, None), (name, err)
    assert "Traceback" not in err
    assert len(lines) == 1, (name, err)
    assert re.search(pattern, lines[0]), (name, lines[0])


def test_corpus_size():
    assert len(CASES) >= 60


# Odd but valid inputs: read correctly, not refused.
def test_odd_but_valid_inputs_are_read_right(good, tmp_path, capsys):
    from xmr.data import open_split

    d = copy_data(good, tmp_path)
    caps = (d / "train_caps.txt").read_text(encoding="utf-8")
    (d / "train_caps.txt").write_bytes(b"\xef\xbb\xbf" + caps.encode() + b"\n\n  \n")  # BOM + trailing blanks
    s = open_split(f"precomputed:{d}", "train")
    assert len(s.captions) == 60 and s.captions[0] == caps.splitlines()[0]
    # COCO: the JSON file itself, per-split image folders under images=DIR, dropped images counted
    coco = tmp_path / "coco"
    (coco / "imgs" / "val2017").mkdir(parents=True)
    anns = [{"id": 10 * i + j, "image_id": i, "caption": f"picture {i} number {j}"} for i in range(3)
            for j in range(5 if i < 2 else 3)]
    (coco / "captions_val2017.json").write_text(json.dumps(
        {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(3)], "annotations": anns}))
    s = open_split(f"coco:{coco / 'captions_val2017.json'},images={coco / 'imgs'}", "dev")
    assert s.image_ids == ["0", "1"] and s.image_paths[0] == coco / "imgs" / "val2017" / "0.jpg"
    err = capsys.readouterr().err
    assert "left out 1 of 3 images with fewer than 5 captions" in err
    assert "COCO dev and test are both captions_val2017.json" in err


def test_xmr_data_opens_the_images(make_flickr8k, capsys):
    root = make_flickr8k()
    (root / "Flicker8k_Dataset" / "1002_b.jpg").write_bytes(b"")
    (root / "Flicker8k_Dataset" / "1003_c.jpg").unlink()
    (root / "Flicker8k_Dataset" / "2001_d.jpg").unlink()
    (root / "Flicker8k_Dataset" / "2001_d.jpg").mkdir()
    assert main(["data", f"flickr8k:{root}", "--splits", "train", "dev"]) == 1
    err = capsys.readouterr().err
    assert "1002_b.jpg: cannot decode image" in err and "1003_c.jpg: image file not found" in err
    assert "2001_d.jpg: is a folder, not an image file" in err
    assert "train: 2 of 3 images cannot be read" in err and "dev: 1 of 2 images" in err and "Traceback" not in err


def test_one_case_through_a_real_process(good, tmp_path):
    import subprocess
    import sys

    d = copy_data(good, tmp_path)
    (d / "train_ims.npy").write_bytes(b"")
    p = subprocess.run([sys.executable, "-m", "xmr", "data", f"precomputed:{d}"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "train_ims.npy" in p.stderr


def test_weights_and_json_from_different_saves_are_refused(good, tmp_path, capsys):
    r = copy_run(good, tmp_path)
    shutil.copy(r / "last.safetensors", r / "best.safetensors")  # a torn pair: new weights, old JSON
    import re

    code = main(["eval", str(r), "--data", f"precomputed:{good / 'data'}", "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert re.search(r"best\.safetensors: does not match best\.json \(SHA-256 differs\)", err)
