"""Linear layers applied to one token per sequence (decode steps), split across the CPU's threads.

With a batch of 1 to 8 tokens, ``x @ W^T`` is a matrix-vector product: it reads the whole weight to do little
arithmetic, and CPU BLAS runs it on a single thread, well below the memory bandwidth of several cores.
Cutting W into one slice per intra-op thread and running the slices as one batched product
(``torch.baddbmm``, which runs the batch entries in parallel) has every core read its part of the weight.
The slices are W's rows, a view of the weight itself; ``transpose=True`` slices W^T's columns instead, made
contiguous once (a copy of the weight), which CPU BLAS reads faster when rows are short (measured at width 768 on
a 2-core CPU: the LM head of the GPT-2 vocabulary 5.6 ms against 7.1 ms, one thread 7.5 ms; q/k/v or fc1 by
0.02-0.05 ms, not worth their copies). Off the CPU, and under ``torch.compile``, one slice.

Plain PyTorch: checkpoints carry this file with their code.
"""

from typing import NamedTuple

import torch


class TokenWeight(NamedTuple):
    """A linear layer's weight and bias sliced for :func:`token_product`.

    ``weight``: (parts, out_features / parts, in_features) slices of W's rows, or (``transposed``)
    (parts, in_features, columns) slices of W^T's columns, zero-padded to parts * columns >= out_features;
    ``bias``: sliced the same way ((parts, out / parts, 1) or (parts, 1, columns)), or None.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    out_features: int
    transposed: bool


def token_weight(weight: torch.Tensor, bias: torch.Tensor | None = None, *, transpose: bool = False) -> TokenWeight:
    """Slice a linear layer's ``weight`` (out_features, in_features) and ``bias`` (out_features,) into up to one part
    per intra-op thread on CPU (W's rows: as many parts as divide out_features; W^T's columns: one per thread)."""
    out_features, in_features = weight.shape
    threads = torch.get_num_threads() if weight.device.type == "cpu" and not torch.compiler.is_compiling() else 1
    if not transpose:
        parts = max(p for p in range(1, threads + 1) if out_features % p == 0)
        rows = out_features // parts
        return TokenWeight(weight.reshape(parts, rows, in_features),
                           None if bias is None else bias.reshape(parts, rows, 1), out_features, False)
    columns = -(-out_features // threads)
    sliced = weight.new_empty(threads, in_features, columns)
    padded_bias = None if bias is None else bias.new_zeros(threads, 1, columns)
    for part in range(threads):  # one transposing copy per slice, zeros past the last column
        block = slice(min(part * columns, out_features), min((part + 1) * columns, out_features))
        width = block.stop - block.start
        sliced[part, :, :width].copy_(weight[block].t())
        sliced[part, :, width:].zero_()
        if bias is not None:
            padded_bias[part, 0, :width].copy_(bias[block])
    return TokenWeight(sliced, padded_bias, out_features, True)


def token_product(x: torch.Tensor, w: TokenWeight) -> torch.Tensor:
    """x (batch, in_features) @ W^T + b -> (batch, out_features) (contiguous), one batched product over the slices."""
    parts, batch = w.weight.shape[0], x.shape[0]
    if not w.transposed:  # (parts, rows, in) @ (parts, in, batch) -> (parts, rows, batch)
        xt = x.t().expand(parts, -1, -1)
        y = torch.bmm(w.weight, xt) if w.bias is None else torch.baddbmm(w.bias, w.weight, xt)
        return y.reshape(w.out_features, batch).t().contiguous()
    xs = x.expand(parts, -1, -1)  # (parts, batch, in) @ (parts, in, columns) -> (parts, batch, columns)
    y = torch.bmm(xs, w.weight) if w.bias is None else torch.baddbmm(w.bias, xs, w.weight)
    return y.transpose(0, 1).reshape(batch, -1)[:, :w.out_features].contiguous()
