"""Parallel (associative) scan of a diagonal linear recurrence x_k = a_k x_{k-1} + b_k, as S5 runs it."""

import torch


def associative_scan(a: torch.Tensor, b: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """All states of x_k = a_k x_{k-1} + b_k (x_{-1} = 0) with a log-depth parallel scan.

    The pairs (a, b) compose as (a_i, b_i) then (a_j, b_j) = (a_j a_i, a_j b_i + b_j); the scan pairs
    neighbours, recurses on the half-length sequence and fills in the other half (O(L) work,
    O(log L) depth). A time-invariant ``a`` (length 1 along the time axis) is never expanded: its
    pairs are just squares. With ``chunk_size`` the sequence is scanned chunk by chunk, carrying the
    last state (memory O(chunk)).

    Args:
        a: (batch or 1, L or 1, ...) transition, broadcastable to ``b``.
        b: (batch, L, ...) inputs.
    Returns:
        x (batch, L, ...).
    """
    length = b.shape[1]
    if a.dim() != b.dim() or a.shape[1] not in (1, length):
        raise ValueError(f"a must have shape (batch or 1, {length} or 1, ...) like b, got {tuple(a.shape)}")
    if chunk_size is None or chunk_size >= length:
        return _scan(a, b)
    out, carry = [], None
    for start in range(0, length, chunk_size):
        b_c = b[:, start:start + chunk_size]
        a_c = a if a.shape[1] == 1 else a[:, start:start + chunk_size]
        x = _scan(a_c, b_c)
        if carry is not None:  # add the carried state propagated through the chunk: prod a_1..a_k * carry
            powers = torch.cumprod(a_c.expand(-1, b_c.shape[1], *a_c.shape[2:]), dim=1)
            x = x + powers * carry.unsqueeze(1)
        carry = x[:, -1]
        out.append(x)
    return torch.cat(out, dim=1)


def _scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    length = b.shape[1]
    if length == 1:
        return b
    half = length // 2
    b_even, b_odd = b[:, 0:2 * half:2], b[:, 1:2 * half:2]
    if a.shape[1] == 1:  # time-invariant: the pair (a, b_even)(a, b_odd) has transition a^2
        x_odd = _scan(a * a, torch.addcmul(b_odd, a, b_even))
        a_next = a
    else:
        a_even, a_odd = a[:, 0:2 * half:2], a[:, 1:2 * half:2]
        x_odd = _scan(a_odd * a_even, torch.addcmul(b_odd, a_odd, b_even))  # states at positions 1, 3, 5, ...
        a_next = a[:, 2::2]
    out = torch.empty_like(b)
    out[:, 0] = b[:, 0]
    out[:, 1::2] = x_odd
    out[:, 2::2] = torch.addcmul(b[:, 2::2], a_next, x_odd[:, :length - half - 1])  # x_2i = a_2i x_2i-1 + b_2i
    return out


def sequential_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Reference loop for :func:`associative_scan` (same shapes)."""
    x = torch.zeros_like(b[:, 0])
    out = []
    for k in range(b.shape[1]):
        x = a[:, k if a.shape[1] > 1 else 0] * x + b[:, k]
        out.append(x)
    return torch.stack(out, dim=1)
