"""Packed-sequence GRU and LSTM layers with hand-written backward passes: the functions ``nn.GRU``
and ``nn.LSTM`` compute on a ``PackedSequence`` from a zero state, with the modules' own parameters.

GRU (PyTorch's gates): r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(W_iz x + b_iz + W_hz h + b_hz),
n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h' = (1 - z) ⊙ n + z ⊙ h.
LSTM: (i, f, g, o) = (σ, σ, tanh, σ)(W_ih x + b_ih + W_hh h + b_hh), c' = f ⊙ c + i ⊙ g,
h' = o ⊙ tanh(c').
In the packed layout (time-major, sorted by length) step t is a block of the ``batch_sizes[t]``
longest sequences, so each step works on a prefix of the batch and no padded step is computed.

Why: autograd through ``nn.GRU``/``nn.LSTM`` on CPU records every gate op of every step and zeroes
and accumulates each weight gradient once per step. Here the input projection and every weight
gradient are one matmul over all (packed) steps, and a backward step is one matmul and a few
elementwise ops whose coefficients are computed for all steps at once after the forward pass.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence


def _steps(batch_sizes: torch.Tensor, reverse: bool) -> tuple[list[int], list[slice]]:
    """The packing's step sizes and each step's rows, in processing order."""
    sizes = batch_sizes.tolist()
    starts = [0]
    for b in sizes[:-1]:
        starts.append(starts[-1] + b)
    order = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    return [sizes[t] for t in order], [slice(starts[t], starts[t] + sizes[t]) for t in order]


class _GRURecurrence(torch.autograd.Function):
    """One GRU direction's recurrence: ``gi`` (N, 3H) packed input gates (b_ih included),
    ``batch_sizes`` (T,), ``w_hh`` (3H, H), ``b_hh`` (3H,), ``reverse`` -> packed states (N, H) and
    each (sorted) sequence's final state (B, H)."""

    @staticmethod
    def forward(ctx, gi, batch_sizes, w_hh, b_hh, reverse):
        sizes, steps = _steps(batch_sizes, reverse)
        hid = w_hh.size(1)
        h = gi.new_zeros(max(sizes), hid)
        out, h_prev, n, ghn = (torch.empty_like(gi[:, :hid]) for _ in range(4))
        rz = torch.empty_like(gi[:, :2 * hid])
        w_t = w_hh.t()
        for b, rows in zip(sizes, steps):
            hp = h[:b]
            h_prev[rows] = hp
            gh = torch.addmm(b_hh, hp, w_t)
            g = gi[rows]
            torch.sigmoid(g[:, :2 * hid] + gh[:, :2 * hid], out=rz[rows])
            ghn[rows] = gh[:, 2 * hid:]
            torch.tanh(torch.addcmul(g[:, 2 * hid:], rz[rows, :hid], gh[:, 2 * hid:]), out=n[rows])
            torch.lerp(n[rows], hp, rz[rows, hid:], out=out[rows])  # (1 - z) n + z h
            h[:b] = out[rows]
        ctx.save_for_backward(w_hh, h_prev, rz, n, ghn)
        ctx.sizes, ctx.steps = sizes, steps
        return out, h

    @staticmethod
    def backward(ctx, d_out, d_last):
        w_hh, h_prev, rz, n, ghn = ctx.saved_tensors
        hid = w_hh.size(1)
        r, z = rz[:, :hid], rz[:, hid:]
        # Per row: d a_r = R dh, d a_z = Z dh, d(W_hn h + b_hn) = A r dh, d a_n = A dh (a_*: gate
        # pre-activations); d h_prev = z dh + d_gh W_hh.
        a = (1 - z) * (1 - n * n)
        coef = torch.stack([a * ghn * r * (1 - r), (h_prev - n) * z * (1 - z), a * r], dim=1)
        d_gh = torch.empty_like(coef)  # (N, 3, H)
        d_h = torch.empty_like(h_prev)
        dh = d_last.clone()
        for b, rows in zip(reversed(ctx.sizes), reversed(ctx.steps)):
            d = torch.add(dh[:b], d_out[rows], out=d_h[rows])
            torch.mul(coef[rows], d.unsqueeze(1), out=d_gh[rows])
            dh[:b] = torch.addmm(d * z[rows], d_gh[rows].view(b, 3 * hid), w_hh)
        d_gi = torch.cat([d_gh[:, :2].flatten(1), a * d_h], dim=1)  # r, z: the same as through gh
        d_gh = d_gh.flatten(1)
        return d_gi, None, d_gh.t() @ h_prev, d_gh.sum(0), None


class _LSTMRecurrence(torch.autograd.Function):
    """One LSTM direction's recurrence: ``gi`` (N, 4H) packed gates (b_ih + b_hh included),
    ``batch_sizes`` (T,), ``w_hh`` (4H, H), ``reverse`` -> packed states (N, H) and each (sorted)
    sequence's final h and c (B, H)."""

    @staticmethod
    def forward(ctx, gi, batch_sizes, w_hh, reverse):
        sizes, steps = _steps(batch_sizes, reverse)
        hid = w_hh.size(1)
        h, c = gi.new_zeros(max(sizes), hid), gi.new_zeros(max(sizes), hid)
        out, h_prev, c_prev, tanh_c = (torch.empty_like(gi[:, :hid]) for _ in range(4))
        act = torch.empty_like(gi)
        w_t = w_hh.t()
        for b, rows in zip(sizes, steps):
            h_prev[rows], c_prev[rows] = h[:b], c[:b]
            gates = torch.addmm(gi[rows], h[:b], w_t)
            torch.sigmoid(gates, out=act[rows])  # i, f, o (g's sigmoid is overwritten below)
            torch.tanh(gates[:, 2 * hid:3 * hid], out=act[rows, 2 * hid:3 * hid])
            i, f, g, o = act[rows].split(hid, dim=1)
            c[:b] = torch.addcmul(f * c[:b], i, g)
            torch.tanh(c[:b], out=tanh_c[rows])
            torch.mul(o, tanh_c[rows], out=out[rows])
            h[:b] = out[rows]
        ctx.save_for_backward(w_hh, h_prev, c_prev, act, tanh_c)
        ctx.sizes, ctx.steps = sizes, steps
        return out, h, c

    @staticmethod
    def backward(ctx, d_out, d_last_h, d_last_c):
        w_hh, h_prev, c_prev, act, tanh_c = ctx.saved_tensors
        hid = w_hh.size(1)
        i, f, g, o = act.split(hid, dim=1)
        # Per row: dc += dh o (1 - tanh² c); d a_(i, f, g) = K_(i, f, g) dc; d a_o = K_o dh.
        to_c = o * (1 - tanh_c * tanh_c)
        coef = torch.stack([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], dim=1)
        coef_o = tanh_c * o * (1 - o)
        d_gates = torch.empty_like(act).view(-1, 4, hid)
        dh, dc = d_last_h.clone(), d_last_c.clone()
        for b, rows in zip(reversed(ctx.sizes), reversed(ctx.steps)):
            d = dh[:b] + d_out[rows]
            d_c = torch.addcmul(dc[:b], d, to_c[rows])
            d_gates[rows, :3] = coef[rows] * d_c.unsqueeze(1)
            torch.mul(d, coef_o[rows], out=d_gates[rows, 3])
            dh[:b] = d_gates[rows].view(b, 4 * hid) @ w_hh
            dc[:b] = d_c * f[rows]
        d_gates = d_gates.view(-1, 4 * hid)
        return d_gates, None, d_gates.t() @ h_prev, None


def _packed_rnn(rnn: nn.RNNBase, packed: PackedSequence, layer_fn) -> tuple[PackedSequence, list]:
    """Every layer and direction of ``rnn`` over ``packed``; ``layer_fn(w, x, sizes, reverse)`` runs
    one direction (``w(name)``: its parameter) -> (packed states, final states...)."""
    x, sizes = packed.data, packed.batch_sizes
    finals = []
    for layer in range(rnn.num_layers):
        outs = []
        for suffix in [""] + (["_reverse"] if rnn.bidirectional else []):
            out, *last = layer_fn(lambda name: getattr(rnn, f"{name}_l{layer}{suffix}"), x, sizes, bool(suffix))
            outs.append(out)
            finals.append(last)
        x = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]

    def unsort(states: torch.Tensor) -> torch.Tensor:
        return states if packed.unsorted_indices is None else states.index_select(1, packed.unsorted_indices)

    return (PackedSequence(x, sizes, packed.sorted_indices, packed.unsorted_indices),
            [unsort(torch.stack(s)) for s in zip(*finals)])


def packed_gru(rnn: nn.GRU, packed: PackedSequence) -> tuple[PackedSequence, torch.Tensor]:
    """``rnn(packed)`` for an ``nn.GRU`` from h = 0: the same outputs and final states."""
    def layer(w, x, sizes, reverse):
        gi = torch.addmm(w("bias_ih"), x, w("weight_ih").t())  # every step's input gates at once
        return _GRURecurrence.apply(gi, sizes, w("weight_hh"), w("bias_hh"), reverse)

    out, (last,) = _packed_rnn(rnn, packed, layer)
    return out, last


def packed_lstm(rnn: nn.LSTM, packed: PackedSequence) -> tuple[PackedSequence, tuple[torch.Tensor, torch.Tensor]]:
    """``rnn(packed)`` for an ``nn.LSTM`` (no projection) from h = c = 0: the same outputs and
    final (h, c)."""
    def layer(w, x, sizes, reverse):
        gi = torch.addmm(w("bias_ih") + w("bias_hh"), x, w("weight_ih").t())
        return _LSTMRecurrence.apply(gi, sizes, w("weight_hh"), reverse)

    out, (h, c) = _packed_rnn(rnn, packed, layer)
    return out, (h, c)
