"""CMMN: Jacobian penalty, memory selection, codes, three-modality training through ``xmr train`` and
``xmr eval``, binary search index."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xmr.cli import main
from xmr.eval.labelled import fused_codes
from xmr.interface import sentence_vectors
from xmr.models import create_model
from xmr.models.cmmn import jacobian_penalty, select_memory


def test_jacobian_penalty_equals_the_autograd_jacobian():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3, bias=False)
    r = torch.randn(4, 5)
    h = torch.sigmoid(layer(r))
    closed = jacobian_penalty(h, layer.weight)
    for i in range(len(r)):
        jac = torch.autograd.functional.jacobian(lambda x: torch.sigmoid(layer(x)), r[i])  # (3, 5)
        assert closed[i].item() == pytest.approx(jac.pow(2).sum().item(), rel=1e-5)


def test_jacobian_penalty_vanishes_for_saturated_codes():
    w = torch.randn(4, 6)
    assert jacobian_penalty(torch.tensor([[0.0, 1.0, 1.0, 0.0]]), w).item() == 0.0
    assert jacobian_penalty(torch.full((1, 4), 0.5), w).item() > 0


def test_topk_memory_picks_the_most_confident_members_of_each_class():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(12, 3)).astype(np.float32)
    labels = np.zeros((12, 3), bool)
    labels[np.arange(12), np.arange(12) % 3] = True
    labels[0, 1] = True  # item 0 is in classes 0 and 1
    probs = rng.random((12, 3))
    probs[9, 0], probs[0, 1] = 5.0, 6.0  # the most confident member of class 0, and of class 1
    vectors, classes = select_memory(feats, labels, probs, k=2, method="topk")
    assert np.bincount(classes).tolist() == [2, 2, 2]
    for c in range(3):
        members = np.flatnonzero(labels[:, c])
        want = members[np.argsort(-probs[members, c])[:2]]
        np.testing.assert_array_equal(vectors[classes == c], feats[want])
    np.testing.assert_array_equal(vectors[classes == 0][0], feats[9])
    np.testing.assert_array_equal(vectors[classes == 1][0], feats[0])


def test_memory_other_selections_and_small_classes():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(20, 4)).astype(np.float32)
    labels = np.zeros((20, 2), bool)
    labels[:18, 0] = True
    labels[18:, 1] = True  # class 1 has 2 members: both are kept for k = 5
    vectors, classes = select_memory(feats, labels, None, k=5, method="random", seed=3)
    assert np.bincount(classes).tolist() == [5, 2]
    rows = [np.flatnonzero((feats == v).all(1))[0] for v in vectors[classes == 0]]
    assert len(set(rows)) == 5 and all(labels[r, 0] for r in rows)
    vectors, classes = select_memory(feats, labels, None, k=3, method="kmeans")
    assert vectors.shape == (5, 4)
    inside = feats[:18]  # centroids lie inside the class's bounding box
    assert (vectors[classes == 0] >= inside.min(0) - 1e-5).all() and (vectors[classes == 0] <= inside.max(0) + 1e-5).all()
    assert select_memory(feats, labels, None, k=0, method="random")[0].shape == (0, 4)
    with pytest.raises(ValueError, match="probabilities"):
        select_memory(feats, labels, None, k=2, method="topk")
    with pytest.raises(ValueError, match="memory_init"):
        select_memory(feats, labels, None, k=2, method="best")


def _model(**kw):
    args = dict(modalities={"a": 6, "b": 4, "c": 5}, n_classes=3, hidden=8, embed_dim=8, fusion_dim=8, bits=8,
                dropout=0.0, memory_sizes={"a": 3, "b": 3, "c": 0})
    return create_model("cmmn", **{**args, **kw})


def test_read_is_a_softmax_over_memory_and_empty_memory_adds_no_context():
    torch.manual_seed(0)
    model = _model()
    for m in ("a", "b"):
        model.set_memory(m, torch.randn(3, 8))
    reps = model.encode_modality("a", torch.randn(4, 6))
    assert set(reps) == {"context.a", "context.b", "r", "emb"}  # modality c has no memory
    qa = model.embed_query(model.pre_features("a", torch.randn(2, 6)))
    weights = torch.softmax(qa @ model.embed_key["b"](model.memory["b"]).T, -1)
    torch.testing.assert_close(model.read(qa, "b"), weights @ model.embed_value["b"](model.memory["b"]))
    assert ((reps["emb"] > 0) & (reps["emb"] < 1)).all()
    assert model.hash_codes(reps["emb"]).dtype == torch.uint8
    with pytest.raises(KeyError, match="modalities"):
        model.encode_modality("d", torch.randn(1, 6))


def test_loss_terms_and_gradient_reach_the_memories():
    torch.manual_seed(0)
    model = _model()
    for m in ("a", "b"):
        model.set_memory(m, torch.randn(3, 8))
    labels = torch.tensor([[1, 0, 0], [0, 1, 1]], dtype=torch.bool)
    out = model.label_loss(model.encode_modality("b", torch.randn(2, 4)), labels)
    assert set(out) == {"loss", "cls", "jacobian", "context"}
    torch.testing.assert_close(out["loss"], out["cls"] + 1e-3 * out["jacobian"] + out["context"])
    out["loss"].backward()
    assert model.memory["a"].grad is not None and model.memory["a"].grad.abs().sum() > 0


def test_fused_codes_and_sentence_vectors():
    assert fused_codes(torch.tensor([[0.9, 0.2, 0.6]]), torch.tensor([[0.3, 0.7, 0.3]])).tolist() == [[1, 0, 0]]
    states = torch.arange(12.0).reshape(1, 4, 3)
    mask = torch.tensor([[True, True, False, False]])
    torch.testing.assert_close(sentence_vectors(states, mask), states[0, :2].mean(0, keepdim=True))


def test_pair_interface_is_negative_squared_distance():
    model = _model(modalities={"image": 6, "text": 384}, memory_sizes=None)
    img, txt = {"emb": torch.rand(3, 8)}, {"emb": torch.rand(4, 8)}
    sim = model.similarity(img, txt)
    torch.testing.assert_close(sim, -((img["emb"][:, None] - txt["emb"][None]) ** 2).sum(-1))
    torch.testing.assert_close(model.pair_similarity(img, {"emb": txt["emb"][:3]}), sim.diagonal())
    with pytest.raises(NotImplementedError, match="xmr train --model cmmn"):
        model.loss(img, txt, {})


@pytest.mark.slow
def test_three_modalities_train_end_to_end_and_resume(tmp_path, capsys):
    """``xmr train --model cmmn`` runs both stages in the one loop; ``xmr eval`` reports label mAP."""
    from xmr.data.labelled_sets import open_labelled, save_npz, synthetic_scenes
    from xmr.eval.labelled import evaluate_labelled
    from xmr.models import create_model
    from xmr import checkpoint

    data = synthetic_scenes(n_classes=4, per_class=40, modalities=("photo", "drawing", "description"), seed=0)
    path = tmp_path / "scenes.npz"
    save_npz(data, path)
    run = tmp_path / "run"
    train = ["train", "--model", "cmmn", "--preset", "tiny", "--data", str(path), "--out", str(run), "--quiet",
             "--threads", "1"]
    assert main([*train, "--set", "epochs=3"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and (run / "curve.png").is_file()
    last = checkpoint.read_meta(run / "last")
    assert set(last["stage_info"]["pre-networks"]["pre_accuracy"]) == {
        f"{m}.{s}" for m in ("photo", "drawing", "description") for s in ("train", "dev")}
    best = checkpoint.read_meta(run / "best")
    assert len(best["dev"]["pairs"]) == 6  # every ordered pair of the three modalities
    assert best["dev"]["mean_mAP"]["real"] == max(r["dev_mAP"] for r in rows)
    model = create_model("cmmn", **best["model_kwargs"])
    checkpoint.load(run / "best", model)
    assert set(model.memory_sizes) == {"photo", "drawing", "description"}
    assert all(n == 4 * 3 for n in model.memory_sizes.values())  # k = 3 per class, 4 classes
    chance = 0.25
    capsys.readouterr()
    assert main(["eval", str(run), "--json", str(tmp_path / "test.json"), "--threads", "1"]) == 0
    assert "mean" in capsys.readouterr().out
    test = json.loads((tmp_path / "test.json").read_text())
    assert test["mean_mAP"]["real"] > 2 * chance  # learned, well above a 4-class random ranking
    assert 0 < test["mean_mAP"]["binary"] <= 1
    assert test["mean_mAP"] == evaluate_labelled(model.eval(), open_labelled(str(path)), "test")["mean_mAP"]
    # Resume with more epochs continues from epoch 3 and keeps the first rows.
    assert main([*train, "--resume", "--set", "epochs=4"]) == 0
    rows2 = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows2) == 4 and rows2[:3] == rows


def test_resume_between_stages_matches_an_uninterrupted_run(tmp_path):
    """A run stopped after the pre-network stage resumes into the joint stage exactly."""
    from xmr.train import TrainConfig, train

    def cfg(out, **over):
        return TrainConfig(model="cmmn", preset="tiny", data="synthetic-scenes,n_classes=3,per_class=20",
                           out=str(tmp_path / out), progress=False, overrides={"pre_epochs": 2, **over})

    full = train(cfg("full", epochs=2))
    train(cfg("part", epochs=0))  # pre-networks and memory only
    part = train(cfg("part", epochs=2), resume=True)
    assert part["mean_mAP"] == full["mean_mAP"]
    a, b = ([json.loads(r)["train_loss"] for r in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("full", "part"))
    assert a == b


def test_cmmn_index_has_a_binary_hamming_index(tmp_path, feature_cache, vsepp_index):
    """A CMMN run over image/text modalities indexes a pair split: Euclidean real-valued search and
    exact Hamming search on its hash codes (faiss binary index) agree with brute force."""
    from conftest import SYNTHETIC_SMALL
    from xmr import checkpoint
    from xmr.data import open_split
    from xmr.data.text import Vocab
    from xmr.features.store import pair_data
    from xmr.search.engine import Searcher
    from xmr.search.index import Collection, SearchError, build_index, embed_all

    torch.manual_seed(0)
    vocab = Vocab.build(open_split(SYNTHETIC_SMALL, "train").captions, 1)
    probe = pair_data(SYNTHETIC_SMALL, "test", create_model("cmmn", modalities={"image": 1, "text": 1},
                                                            n_classes=2).inputs,
                      vocab, 50, cache=feature_cache, progress=False)
    kwargs = dict(modalities={"image": probe.image_dim, "text": 384}, n_classes=3, hidden=16, embed_dim=8,
                  fusion_dim=8, bits=16, dropout=0.0, memory_sizes={"image": 2, "text": 2})
    model = create_model("cmmn", **kwargs)
    run = tmp_path / "run"
    run.mkdir()
    checkpoint.save(run / "best", model, {"model": "cmmn", "model_kwargs": kwargs, "image_input": "pooled",
                                          "extractor": "efficientnet-lite0-224", "data": SYNTHETIC_SMALL, "max_len": 50})
    vocab.save(run / "vocab.json")
    info = build_index(run, Collection("split", SYNTHETIC_SMALL, "test"), tmp_path / "index", cache=feature_cache,
                       progress=False)
    assert info["metric"] == "l2" and info["binary_bits"] == 16
    assert (tmp_path / "index" / "images.bin.faiss").is_file()

    searcher = Searcher(tmp_path / "index")
    query = "a red circle"
    with torch.no_grad():
        q = searcher.model.encode_texts(searcher.text_batch([query]))["emb"]
    images = torch.from_numpy(embed_all(searcher.model, probe, "images"))
    real = searcher.search_text(query, k=10)
    want = -((images - q) ** 2).sum(1)
    np.testing.assert_allclose([h.score for h in real], np.sort(want.numpy())[::-1][:10], rtol=1e-4, atol=1e-5)
    binary = searcher.search_text(query, k=10, binary=True)
    hamming = (model.hash_codes(images) != model.hash_codes(q)).sum(1).numpy()
    assert [-h.score for h in binary] == sorted(hamming)[:10]
    assert all(hamming[h.image_index] == -h.score for h in binary)
    with pytest.raises(SearchError, match="no hash codes"):  # an embedding model's index has none
        Searcher(vsepp_index[1]).search_text(query, k=5, binary=True)


def test_aligned_sets_report_fused_database_codes(tmp_path):
    from xmr.data.labelled_sets import LabelledSet, Modality
    from xmr.eval.label_ranking import label_retrieval_metrics
    from xmr.eval.labelled import codes, evaluate_labelled, format_labelled

    rng = np.random.default_rng(0)
    labels = np.eye(3, dtype=bool)[rng.integers(0, 3, 60)]
    splits = {"train": np.arange(40), "dev": np.arange(40, 50), "test": np.arange(50, 60)}
    data = LabelledSet("pairs", {m: Modality(rng.normal(size=(60, d)).astype(np.float32), labels, splits)
                                 for m, d in (("image", 6), ("text", 4))}, ["a", "b", "c"], aligned=True)
    torch.manual_seed(0)
    model = _model(modalities={"image": 6, "text": 4}, memory_sizes=None).eval()
    result = evaluate_labelled(model, data, "test", map_at=None)
    assert set(result["fused"]) == {"image->fused", "text->fused"}
    h_db = [codes(model, m, data.modalities[m].features[:40]) for m in ("image", "text")]
    fused = ((h_db[0] + h_db[1]) > 1).astype(np.float32)
    q = (codes(model, "text", data.modalities["text"].features[50:]) > 0.5).astype(np.float32)
    want = label_retrieval_metrics(q, fused, labels[50:], labels[:40], metric="hamming", p_at=(1, 10, 100))
    assert result["fused"]["text->fused"]["mAP"] == pytest.approx(want["mAP"])
    assert "text->fused" in format_labelled(result)


class _CodesAreFeatures:
    """A stand-in label model whose h is its input (so the codes of a test are written by hand)."""
    bits = 3

    def eval(self):
        return self

    def encode_modality(self, modality, x):
        return {"emb": x}

    def hash_codes(self, h):
        return (h > 0.5).to(torch.uint8)


def test_fused_codes_rank_a_hand_made_aligned_set():
    """3 training items and 1 test item, aligned, 3-bit h written out: the fused database codes
    b = (h_img + h_txt > 1) and the mAP of each query modality against them, worked by hand."""
    from xmr.data.labelled_sets import LabelledSet, Modality
    from xmr.eval.labelled import evaluate_labelled, format_labelled

    h_img = [[0.9, 0.2, 0.1], [0.3, 0.8, 0.4], [0.2, 0.9, 0.7], [0.9, 0.1, 0.2]]
    h_txt = [[0.4, 0.6, 0.3], [0.8, 0.4, 0.2], [0.1, 0.3, 0.6], [0.2, 0.1, 0.9]]
    # fused codes of the training items 0, 1, 2: [1,0,0], [1,1,0], [0,1,1]
    labels = np.array([[0, 1], [1, 0], [1, 0], [1, 0]], bool)  # item 0 is class b, the rest class a
    splits = {"train": np.arange(3), "dev": np.array([3]), "test": np.array([3])}
    data = LabelledSet("hand", {"image": Modality(np.array(h_img, np.float32), labels, splits),
                                "text": Modality(np.array(h_txt, np.float32), labels, splits)}, ["a", "b"],
                       aligned=True)
    result = evaluate_labelled(_CodesAreFeatures(), data, "test", map_at=None)
    # image query b = [1,0,0]: Hamming 0, 1, 3 to items 0 (not relevant), 1, 2 -> AP = (1/2 + 2/3) / 2
    assert result["fused"]["image->fused"]["mAP"] == pytest.approx(7 / 12)
    assert result["fused"]["image->fused"]["P@1"] == 0
    # text query b = [0,0,1]: Hamming 2, 3, 1 to items 0, 1, 2 -> ranking 2, 0, 1 -> AP = (1 + 2/3) / 2
    assert result["fused"]["text->fused"]["mAP"] == pytest.approx(5 / 6)
    assert result["fused"]["text->fused"]["P@1"] == 1
    assert set(result["pairs"]) == {"image->text", "text->image"}  # the per-modality pairs as well
    table = format_labelled(result)
    assert "58.3" in table.splitlines()[-2] and "83.3" in table.splitlines()[-1]
    unaligned = LabelledSet("hand", data.modalities, ["a", "b"], aligned=False)
    assert "fused" not in evaluate_labelled(_CodesAreFeatures(), unaligned, "test")
    assert "fused" not in evaluate_labelled(_CodesAreFeatures(), data, "test", binary=False)


def test_eval_of_a_run_on_an_aligned_set_reports_fused_codes(tmp_path, capsys):
    """``xmr eval`` of a CMMN run trained on an aligned set prints and writes the fused results
    (query modality -> one fused code per database item) beside the per-modality pairs."""
    from xmr.data.labelled_sets import LabelledSet, Modality, save_npz

    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    splits = {"train": np.arange(40), "dev": np.arange(40, 50), "test": np.arange(50, 60)}
    data = LabelledSet("aligned", {m: Modality(rng.normal(size=(3, d))[y] * 3 + rng.normal(size=(60, d)),
                                               np.eye(3, dtype=bool)[y], splits)
                                   for m, d in (("image", 6), ("text", 4))}, ["a", "b", "c"], aligned=True)
    path = tmp_path / "aligned.npz"
    save_npz(data, path)
    run = tmp_path / "run"
    assert main(["train", "--model", "cmmn", "--preset", "tiny", "--data", str(path), "--out", str(run), "--quiet",
                 "--threads", "1", "--set", "epochs=1", "--set", "pre_epochs=1"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json", str(tmp_path / "test.json"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "test.json").read_text())
    fused = {"image->fused", "text->fused"}
    assert set(result["fused"]) == fused and all(p in out for p in fused)
    for r in result["fused"].values():
        assert set(r) == {"mAP", "mAP@500", "P@1", "P@10", "P@100"} and 0 < r["mAP"] <= 1
    assert set(result["pairs"]) == {"image->text", "text->image"} and "binary" in result["pairs"]["image->text"]
