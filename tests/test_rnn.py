"""packed_gru / packed_lstm (hand-written backward) compute what nn.GRU / nn.LSTM compute on a
PackedSequence: outputs, final states and every gradient."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from xmr.models.rnn import _GRURecurrence, _LSTMRecurrence, packed_gru, packed_lstm
from xmr.models.text_encoders import GRUEncoder


def _flat(states):
    return list(states) if isinstance(states, tuple) else [states]


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
def test_outputs_states_and_gradients_equal_torch(kind, bidirectional, layers):
    torch.manual_seed(0)
    cls, ours = (nn.GRU, packed_gru) if kind == "gru" else (nn.LSTM, packed_lstm)
    rnn = cls(5, 4, num_layers=layers, batch_first=True, bidirectional=bidirectional).double()
    x = torch.randn(4, 7, 5, dtype=torch.double, requires_grad=True)
    lengths = torch.tensor([2, 7, 1, 4])  # unsorted, one of a single step
    results = []
    for run in (ours, lambda m, p: m(p)):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, last = run(rnn, packed)
        out, last = pad_packed_sequence(out, batch_first=True)[0], _flat(last)
        torch.manual_seed(1)  # the same random projections of both results
        loss = (out * torch.randn_like(out)).sum() + sum((s * torch.randn_like(s)).sum() for s in last)
        results.append(([out, *last], torch.autograd.grad(loss, [x, *rnn.parameters()])))
    (values, grads), (ref_values, ref_grads) = results
    assert values[1].shape == (layers * (1 + bidirectional), 4, 4)
    for v, ref in zip(values + list(grads), ref_values + list(ref_grads), strict=True):
        torch.testing.assert_close(v, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_recurrences_gradcheck(reverse):
    torch.manual_seed(0)
    sizes = torch.tensor([3, 3, 2, 1])  # a packing of lengths 4, 3, 2
    n = int(sizes.sum())
    gi = torch.randn(n, 12, dtype=torch.double, requires_grad=True)
    w_hh = torch.randn(12, 4, dtype=torch.double, requires_grad=True)
    b_hh = torch.randn(12, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, w, b: _GRURecurrence.apply(g, sizes, w, b, reverse),
                                    (gi, w_hh, b_hh))
    gates = torch.randn(n, 16, dtype=torch.double, requires_grad=True)
    w_lstm = torch.randn(16, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, w: _LSTMRecurrence.apply(g, sizes, w, reverse), (gates, w_lstm))


def test_encoder_pads_with_zeros_and_reads_the_last_real_word():
    torch.manual_seed(0)
    enc = GRUEncoder(None, 6, 5, bidirectional=True)
    x = torch.randn(3, 5, 6)
    lengths = torch.tensor([5, 2, 3])
    states, sentence = enc.run(x, lengths)
    assert states.shape == (3, 5, 5) and sentence.shape == (3, 5)
    assert states[1, 2:].abs().max() == 0 and states[2, 3:].abs().max() == 0
    # the same sentence alone, unpadded, gives the same states
    alone, alone_sentence = enc.run(x[1:2, :2], lengths[1:2])
    torch.testing.assert_close(alone[0], states[1, :2])
    torch.testing.assert_close(alone_sentence[0], sentence[1])
