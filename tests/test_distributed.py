"""torchrun with 2 CPU processes (gloo): the loss and every gradient of a global batch equal a
single process's on the same batch (tolerance: rtol 1e-4, atol 1e-6), for an embedding model
(VSE++, hardest negatives), a pairwise one (MMCA) and one with label-based losses (JGCAR)."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xmr import distributed
from xmr.models import create_model
from xmr.train import batch_loss

pytestmark = pytest.mark.slow  # trains, extracts features or starts processes

B, REGIONS, DIM, WIDTH, VOCAB = 8, 4, 12, 6, 30


def small_model(name: str):
    torch.manual_seed(0)
    if name == "vsepp":
        model = create_model("vsepp", vocab_size=VOCAB, image_dim=DIM, embed_dim=16, word_dim=8)
        model.on_epoch_start(1)  # hardest negatives
        return model
    if name == "mmca":
        return create_model("mmca", vocab_size=VOCAB, image_dim=DIM, d=16, heads=2, filters=4, bert_dim=10,
                            dropout=0.0)
    return create_model("jgcar", vocab_size=VOCAB, image_dim=DIM, n_regions=REGIONS, max_len=WIDTH, word_dim=8,
                        phrase_dim=8, d=8, att_dim=8, negatives=3, dropout=0.0)


def global_batch() -> dict:
    """8 pairs; rows 2 and 3 share an image (never each other's negatives)."""
    g = torch.Generator().manual_seed(7)
    lengths = torch.tensor([6, 3, 5, 1, 4, 6, 2, 5])
    tokens = torch.randint(4, VOCAB, (B, WIDTH), generator=g) * (torch.arange(WIDTH)[None] < lengths[:, None])
    images = torch.tensor([0, 1, 2, 2, 3, 4, 5, 6])
    regions = torch.randn(7, REGIONS, DIM, generator=g)[images]
    same = (images[:, None] == images[None]) & ~torch.eye(B, dtype=torch.bool)
    labels = torch.zeros(B, 3, dtype=torch.int8)
    labels[torch.arange(B), images % 3] = 1
    return {"image": regions, "pooled": regions.mean(1), "tokens": tokens, "lengths": lengths,
            "bert": torch.randn(B, WIDTH, 10, generator=g).half(), "bert_mask": torch.arange(WIDTH)[None] < lengths[:, None],
            "labels": labels, "same_image": same}


def for_model(name: str, batch: dict) -> dict:
    batch = dict(batch)
    pooled = batch.pop("pooled")
    if name == "vsepp":
        batch["image"] = pooled
    return batch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["vsepp", "mmca", "jgcar"])
def test_two_processes_match_one(name, tmp_path, monkeypatch):
    out = tmp_path / "ddp.npz"
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(worker), str(out), name]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ddp = np.load(out)

    model = small_model(name)
    parts = batch_loss(model, model, for_model(name, global_batch()), distributed.Context())
    parts["loss"].backward()
    np.testing.assert_allclose(ddp["loss"], parts["loss"].detach().numpy(), rtol=1e-5)
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == {k[len("grad/"):] for k in ddp.files if k.startswith("grad/")}
    for k, g in grads.items():
        np.testing.assert_allclose(ddp[f"grad/{k}"], g.numpy(), rtol=1e-4, atol=1e-6, err_msg=k)


def test_shard_needs_an_even_split():
    assert distributed.shard(8, distributed.Context(1, 2)) == slice(4, 8)
    with pytest.raises(ValueError, match="does not split over 3"):
        distributed.shard(8, distributed.Context(0, 3))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc (Linux)")
def test_worker_threads_reports_a_live_gloo_named_thread_until_it_is_joined():
    import ctypes
    import threading

    release, named = threading.Event(), threading.Event()

    def body():
        ctypes.CDLL(None).prctl(15, b"gloo_probe", 0, 0, 0)  # PR_SET_NAME: the OS-level name /proc shows
        named.set()
        release.wait()

    t = threading.Thread(target=body)
    t.start()
    named.wait()
    assert distributed.worker_threads(settle_s=0.05) == ["gloo_probe"]  # still alive after the wait
    release.set()
    t.join()
    assert distributed.worker_threads() == []  # gone once the thread has exited, however late /proc drops it
