"""VSE++'s pooling heads: the mean of MiniLM states (text_pool) and max over projected grid
cells (image_pool)."""
from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("pool", ["mean", "gru+mean"])
def test_text_pool_reads_the_mean_of_minilm_states(pool):
    """``text_pool="mean"``: a linear map of the masked mean of the states (padding ignored);
    ``"gru+mean"`` adds it to the GRU's vector."""
    from xmr.interface import BERT_DIM
    from xmr.models.vsepp import VSEPP

    torch.manual_seed(0)
    model = VSEPP(vocab_size=10, image_dim=8, embed_dim=16, text_input="bert", text_pool=pool).eval()
    states, mask = torch.randn(3, 5, BERT_DIM), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool()
    emb = model.encode_texts({"bert": states, "bert_mask": mask})["emb"]
    assert emb.shape == (3, 16) and torch.allclose(emb.norm(dim=1), torch.ones(3))
    padded = states.clone()
    padded[~mask] = 1e3  # what padding positions hold must not matter
    assert torch.allclose(model.encode_texts({"bert": padded, "bert_mask": mask})["emb"], emb, atol=1e-5)
    if pool == "mean":
        mean = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        assert model.text is None
        assert torch.allclose(emb, torch.nn.functional.normalize(model.text_mean(mean), dim=-1), atol=1e-6)


def test_text_pool_bad_values_are_named():
    from xmr.models.vsepp import VSEPP

    with pytest.raises(ValueError, match="text_pool must be"):
        VSEPP(vocab_size=10, image_dim=8, text_input="bert", text_pool="max")
    with pytest.raises(ValueError, match="needs text_input='bert'"):
        VSEPP(vocab_size=10, image_dim=8, text_pool="mean")



def test_image_pool_max_projects_every_cell_then_takes_the_max():
    from xmr.models.vsepp import VSEPP

    torch.manual_seed(0)
    model = VSEPP(vocab_size=10, image_dim=8, embed_dim=16, image_pool="max").eval()
    assert model.inputs.image == "regions"  # it asks for the grid, not the pooled vector
    grid = torch.randn(2, 9, 8)
    emb = model.encode_images({"image": grid})["emb"]
    expected = torch.nn.functional.normalize(model.image_fc(grid).amax(1), dim=-1)
    assert torch.allclose(emb, expected, atol=1e-6)
    mean_model = VSEPP(vocab_size=10, image_dim=8, embed_dim=16)
    assert mean_model.inputs.image == "pooled"
    with pytest.raises(ValueError, match="image_pool must be"):
        VSEPP(vocab_size=10, image_dim=8, image_pool="gem")
