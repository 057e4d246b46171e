"""One rank of tests/test_distributed.py (run by torchrun): the loss and gradients of one global
batch through xmr.train.batch_loss, saved by rank 0; then every rank leaves the process group through
xmr.distributed.teardown and checks that no gloo thread is left to race interpreter shutdown."""
from __future__ import annotations

import sys

import numpy as np
import torch

from xmr import distributed
from xmr.train import batch_loss

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_distributed import for_model, global_batch, small_model  # noqa: E402


def main() -> None:
    out, name = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    ctx = distributed.setup()
    model = small_model(name)
    engine = torch.nn.parallel.DistributedDataParallel(model, static_graph=True)
    parts = batch_loss(engine, model, for_model(name, global_batch()), ctx)
    parts["loss"].backward()
    if ctx.main:
        grads = {f"grad/{k}": p.grad.numpy() for k, p in model.named_parameters() if p.grad is not None}
        np.savez(out, loss=parts["loss"].detach().numpy(), **grads)
    distributed.barrier(ctx)
    del engine, parts  # DDP's reducer holds the process group, which teardown must free
    distributed.teardown(ctx)
    # Gloo's worker threads must be gone before the interpreter shuts down (see teardown).
    left = distributed.worker_threads()
    assert not left, f"threads outlive the process group: {left}"


if __name__ == "__main__":
    main()
