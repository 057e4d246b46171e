"""Query an index: text -> images and image -> text, with a pairwise model's re-ranking.

The first stage asks faiss for the top ``shortlist`` items by the model's metric on ``model.embed``
vectors (inner product; Euclidean for CMMN, reported as the negative squared distance), or with
``binary=True`` by Hamming distance on hash codes (reported as the negative bit count); a
pairwise model (MMCA, JGCAR, ACMM) then re-scores them on the query's and candidates' parts with
evaluation's retriever (``xmr.eval.two_step.rerank``), so search and ``xmr eval --two-step`` rank
alike. Queries are
validated here, so the CLI and the HTTP API give the same clear errors.

``search_texts`` / ``search_images`` answer many queries at once (the server's micro-batches,
``xmr.search.batching``): one encoder pass over all of them, one faiss search with every query
vector, a pairwise model's re-rank per query; each query's hits equal those of ``search_text`` /
``search_image`` alone (which are one-query calls of them), as every model's text encoder
ignores padding (packed GRUs, masked attention and pooling).

Each hit also carries ``match`` (``strong`` / ``weak`` / ``none``): its first-stage score against
what top hits score on the model's own dev split (``xmr.search.calibration``), so a person can
tell a real match from the best of an unrelated collection; Hamming search and an index built
without the run's dev split give none.

Query sentences go through MiniLM on ``text_runtime`` (``xmr.features.text.RUNTIMES``; default
``onnx``, faster on CPU: results/text-runtime.json), query images through the feature network on
the runtime the index's features were extracted with (``feature_runtime`` in its ``meta.json``;
torch for an index without it), so a query image is encoded as the indexed ones were. Both ONNX
files are exported once into ``<cache>/onnx/``: shared by every index (the networks do not depend
on it) and beside the feature cache the build already writes to, where an index version folder
is published whole and never written to afterwards.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from xmr.eval.two_step import rerank
from xmr.features.store import DEFAULT_CACHE
from xmr.search.calibration import verdict
from xmr.search.index import SearchError, file_hash, read_meta

MAX_QUERY_CHARS = 300
MAX_K = 100
TEXT_RUNTIME = "onnx"  # xmr serve / xmr search --text-runtime's default


@dataclass
class Hit:
    rank: int
    score: float
    image_id: str | None = None
    image_index: int | None = None
    caption: str | None = None
    caption_index: int | None = None
    first_stage_score: float | None = None
    match: str | None = None  # "strong" | "weak" | "none" (xmr.search.calibration)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _read_faiss(read, path: Path):
    """A faiss index file; a missing, truncated or corrupt one is a SearchError naming it."""
    if not path.is_file():
        raise SearchError(f"{path}: index file missing; rebuild the index with `xmr index build`")
    try:
        return read(str(path))
    except RuntimeError as e:
        raise SearchError(f"{path}: unreadable faiss index ({path.stat().st_size} bytes, truncated or corrupt: "
                          f"{str(e).strip().splitlines()[-1][:120]}); rebuild the index with `xmr index build`") from None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as e:
        raise SearchError(f"{path}: unreadable ({e}); rebuild the index with `xmr index build`") from None


class Searcher:
    """A loaded index with its model; thread-safe for reads (torch inference, faiss search)."""

    def __init__(self, path: str | Path, shortlist: int = 100, check_checkpoint: bool = True,
                 text_runtime: str = TEXT_RUNTIME, cache: str | Path = DEFAULT_CACHE):
        import faiss

        from xmr.features.text import check_runtime
        from xmr.runs import open_run

        check_runtime(text_runtime)
        self.text_runtime, self.onnx_dir = text_runtime, Path(cache) / "onnx"
        self.path = Path(path)
        self.meta = read_meta(self.path)
        run = Path(self.meta["run"])
        if not (run / "best.safetensors").is_file():
            raise SearchError(f"{self.path}: the model run {run} it was built with is gone")
        if check_checkpoint and file_hash(run / "best.safetensors") != self.meta["checkpoint_sha256"]:
            raise SearchError(f"{self.path}: built with checkpoint {self.meta['checkpoint_sha256']} of {run}, "
                              "which has changed since; rebuild the index")
        trained = open_run(run)
        self.model, self.vocab, self.run_meta = trained.model, trained.vocab, trained.meta
        if self.run_meta["model"] != self.meta["model"]:
            raise SearchError(f"{self.path}: index is for model {self.meta['model']!r}, run holds "
                              f"{self.run_meta['model']!r}")
        self.items = _read_json(self.path / "items.json")
        self.indexes = {side: _read_faiss(faiss.read_index, self.path / f"{side}.faiss") for side in self.meta["counts"]}
        self.binary_indexes = {side: _read_faiss(faiss.read_index_binary, self.path / f"{side}.bin.faiss")
                               for side in self.meta["counts"] if (self.path / f"{side}.bin.faiss").is_file()}
        self.shortlist = shortlist
        self.image_of = {image_id: i for i, image_id in enumerate(self.items["image_ids"])}

    def warm_up(self) -> None:
        """Load what queries need (text encoder, CNN, stored features) now, not in a first request."""
        if "bert" in self.model.inputs.text:
            _ = self._bert
        if self.meta["image_input"] != "pixels":  # a pixels model needs no feature extractor
            _ = self._backbone
        if "images" in self.indexes:
            _ = self.image_features
            self.search_text("a photo", k=1)

    # ------------------------------------------------------------------ inputs
    @cached_property
    def image_features(self) -> np.ndarray:
        return np.load(self.path / "image_features.npy", mmap_mode="r")

    @cached_property
    def text_features(self) -> dict[str, np.ndarray]:
        return {p.stem[len("text_"):]: np.load(p, mmap_mode="r") for p in self.path.glob("text_*.npy")}

    @cached_property
    def _bert(self):
        from xmr.features.text import load_encoder

        return load_encoder(self.text_runtime, self.model.inputs.bert_tail, self.onnx_dir)

    @property
    def feature_runtime(self) -> str:
        """The runtime of the index's image features, and so of query images."""
        return self.meta.get("feature_runtime") or "torch"

    @cached_property
    def _backbone(self):
        from xmr.features.image import extractor_parts, load_network

        return [(load_network(spec, self.feature_runtime, self.onnx_dir), spec)
                for spec in extractor_parts(self.meta["extractor"])]

    def text_batch(self, captions: list[str], stored: np.ndarray | None = None) -> dict:
        """Model inputs of sentences: token ids, plus BERT states (stored rows, or computed now)."""
        tokens, lengths = self.vocab.encode_batch(captions, self.meta["max_len"])
        batch = {"tokens": torch.from_numpy(tokens), "lengths": torch.from_numpy(lengths)}
        if "bert" in self.model.inputs.text:
            if stored is not None:
                states, mask = self.text_features["bert"][stored], self.text_features["bert_mask"][stored]
            else:
                from xmr.features.text import bert_encode

                # the layer the model reads (Inputs.bert_tail), as it was trained on; padded only to
                # the longest query, not max_len: masked padding changes no state, and costs MiniLM time
                states, mask = bert_encode(captions, *self._bert, tail_layers=self.model.inputs.bert_tail,
                                           padding="longest")
            batch["bert"], batch["bert_mask"] = torch.from_numpy(np.asarray(states)), torch.from_numpy(np.asarray(mask))
        return batch

    def image_batch_from_pil(self, images: list) -> dict:
        """Model inputs of PIL images: resized pixels, or the extractor's grid / pooled features."""
        from xmr.features.image import joined_image_features

        if self.meta["image_input"] == "pixels":  # a model with its own CNN reads the resized image
            from xmr.features.pixels import resized_pixels

            size = self.model.inputs.pixels
            return {"image": torch.from_numpy(np.stack([resized_pixels(im, size) for im in images]))}

        return {"image": joined_image_features(images, self._backbone, self.meta["image_input"] == "regions")}

    def image_batch_stored(self, idx: np.ndarray) -> dict:
        if self.image_features.dtype == np.uint8:  # raw pixels (image input "pixels")
            return {"image": torch.from_numpy(np.ascontiguousarray(self.image_features[idx]))}
        return {"image": torch.from_numpy(np.asarray(self.image_features[idx], dtype=np.float32))}

    # ------------------------------------------------------------------ checks
    def check_k(self, k: int) -> int:
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise SearchError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        return k

    def check_query(self, query: str) -> str:
        if not isinstance(query, str) or not query.strip():
            raise SearchError("empty query: give a sentence to search for")
        if len(query) > MAX_QUERY_CHARS:
            raise SearchError(f"query is {len(query)} characters; the limit is {MAX_QUERY_CHARS}")
        return " ".join(query.split())

    def need(self, side: str) -> None:
        if side not in self.indexes:
            raise SearchError(f"this index holds no {side} (collection: {self.meta['collection']['kind']})")

    # ------------------------------------------------------------------ search
    @torch.no_grad()
    def _search(self, query_reps: dict, side: str, k: int, candidate_batch, binary: bool = False) -> list[list[Hit]]:
        """The top ``k`` of ``side`` for each query encoded in ``query_reps`` (one faiss search for all)."""
        emb = self.model.embed(query_reps).float()
        depth = min(self.indexes[side].ntotal, max(k, self.shortlist if self.model.pairwise else k))
        if binary:
            if side not in self.binary_indexes:
                raise SearchError(f"this index has no hash codes (model {self.meta['model']!r}); search without binary")
            code = np.packbits(self.model.hash_codes(emb).numpy().astype(np.uint8), axis=1)
            first, idx = self.binary_indexes[side].search(code, depth)
            first = -first.astype(np.float32)
        else:
            first, idx = self.indexes[side].search(np.ascontiguousarray(emb.numpy(), dtype=np.float32), depth)
            if self.meta.get("metric", "ip") == "l2":  # faiss gives squared distances: higher score = closer
                first = -first
        levels = None if binary else (self.meta.get("match_levels") or {}).get(side)
        answers = []
        for q, (q_first, q_idx) in enumerate(zip(first, idx)):
            keep = q_idx >= 0
            q_first, q_idx = q_first[keep], q_idx[keep]
            scores = q_first
            if self.model.pairwise and len(q_idx):  # re-rank the query's shortlist with the pair score
                encode = self.model.encode_images if side == "images" else self.model.encode_texts
                scores = rerank(self.model, query_reps, encode(candidate_batch(q_idx)), torch.tensor([q]),
                                torch.arange(len(q_idx))[None], query_is_image=(side == "captions"))[0].numpy()
            answers.append(self._hits(side, scores, q_first, q_idx, k, levels))
        return answers

    def _hits(self, side: str, scores: np.ndarray, first: np.ndarray, idx: np.ndarray, k: int,
              levels: dict | None) -> list[Hit]:
        """One query's top ``k`` by ``scores`` as hits (``first``: first-stage scores, ``idx``: rows of ``side``)."""
        hits = []
        for rank, o in enumerate(np.argsort(-scores, kind="stable")[:k], 1):
            hit = Hit(rank, float(scores[o]), first_stage_score=float(first[o]) if self.model.pairwise else None,
                      match=verdict(float(first[o]), levels) if levels else None)
            if side == "images":
                hit.image_index, hit.image_id = int(idx[o]), self.items["image_ids"][idx[o]]
            else:
                hit.caption_index, hit.caption = int(idx[o]), self.items["captions"][idx[o]]
                owner = self.items["caption_image"][idx[o]]
                if owner >= 0 and self.items["image_ids"]:
                    hit.image_index, hit.image_id = owner, self.items["image_ids"][owner]
            hits.append(hit)
        return hits

    def search_texts(self, queries: list[str], k: int = 10, binary: bool = False) -> list[list[Hit]]:
        """Images for each of several sentences, encoded together (``binary``: by Hamming distance
        of hash codes); each answer equals ``search_text`` of that sentence alone."""
        queries, k = [self.check_query(q) for q in queries], self.check_k(k)
        self.need("images")
        self.model.eval()
        with torch.no_grad():
            reps = self.model.encode_texts(self.text_batch(queries))
        return self._search(reps, "images", k, self.image_batch_stored, binary)

    def search_text(self, query: str, k: int = 10, binary: bool = False) -> list[Hit]:
        """Images for a sentence (``binary``: by Hamming distance of hash codes)."""
        return self.search_texts([query], k, binary)[0]

    def search_images(self, images: list, k: int = 10, binary: bool = False) -> list[list[Hit]]:
        """Sentences for each of several PIL images, encoded together; each answer equals
        ``search_image`` of that image alone."""
        k = self.check_k(k)
        self.need("captions")
        self.model.eval()
        with torch.no_grad():
            reps = self.model.encode_images(self.image_batch_from_pil(images))
        return self._search(reps, "captions", k, self._stored_captions, binary)

    def search_image(self, image, k: int = 10, binary: bool = False) -> list[Hit]:
        """Sentences for a PIL image."""
        return self.search_images([image], k, binary)[0]

    def _stored_captions(self, idx: np.ndarray) -> dict:
        captions = self.items["captions"]
        return self.text_batch([captions[i] for i in idx], idx)

    def sentences_for_item(self, image_id: str, k: int = 5) -> list[Hit]:
        """Best sentences in the index for one of its own images (stored features)."""
        i = self.image_index(image_id)
        k = self.check_k(k)
        self.need("captions")
        self.model.eval()
        with torch.no_grad():
            reps = self.model.encode_images(self.image_batch_stored(np.array([i])))
        return self._search(reps, "captions", k, self._stored_captions)[0]

    def image_index(self, image_id: str) -> int:
        if image_id not in self.image_of:
            raise KeyError(f"no image {image_id!r} in this index")
        return self.image_of[image_id]

    def own_captions(self, image_id: str) -> list[str]:
        i = self.image_index(image_id)
        return [c for c, owner in zip(self.items["captions"], self.items["caption_image"]) if owner == i]

    def load_image(self, image_id: str):
        """The collection's own image (a file of the collection, or a rendered synthetic image)."""
        i = self.image_index(image_id)
        paths = self.items["image_paths"]
        if paths:
            from xmr.data.images import load_rgb

            return load_rgb(paths[i])
        coll = self.meta["collection"]
        if coll["kind"] != "split":
            raise SearchError(f"image {image_id!r} has no stored file")
        from xmr.data import open_split

        return open_split(coll["source"], coll["split"]).load_image(i)

    @torch.no_grad()
    def attention(self, image_id: str, query: str) -> dict | None:
        """The model's attention over the image's grid cells for a sentence, if it has one."""
        if not self.model.has_attention_maps:
            return None
        i = self.image_index(image_id)
        query = self.check_query(query)
        img = self.model.encode_images(self.image_batch_stored(np.array([i])))
        txt = self.model.encode_texts(self.text_batch([query]))
        a_v, a_s = self.model.attention_maps(img, txt)
        side = int(round(a_v.size(1) ** 0.5))
        return {"grid": side, "weights": a_v[0].tolist()}
