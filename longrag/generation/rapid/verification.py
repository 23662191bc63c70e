"""Verification: the retrieval-augmented target distribution and the acceptance rule.

With target logits ``z``, ``p = softmax(z / T)`` and drafter distribution ``q``, the target
distribution used for acceptance is::

    p_hat = softmax(z / T + eta * (q - p))      # only where p >= tail * max(p)

A draft token ``x`` is accepted with probability ``min(1, p_hat(x) / q(x))``; on rejection the
replacement is drawn from ``norm(max(p - p_hat, p - q, 0))``; after a fully accepted draft the
bonus token is drawn from ``p``. ``eta = 0`` is exactly standard speculative sampling (the
output follows the target's distribution); ``eta > 0`` pulls the output toward the drafter
on purpose. With ``temperature = 0`` acceptance is argmax agreement on the adjusted logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def adjusted_logits(target_logits: torch.Tensor, q: torch.Tensor, *, eta: float, temperature: float,
                    tail: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, log-space logits of p_hat)`` for one position (or a batch on the last dim).

    ``p = softmax(z / T)``; ``p_hat = softmax(z / T + eta * (q - p))`` where ``p >= tail * max p``;
    tail tokens keep ``z / T``. With ``temperature <= 0`` the distributions use ``T = 1``.
    """
    t = temperature if temperature > 0 else 1.0
    z = target_logits.float() / t
    p = torch.softmax(z, dim=-1)
    if eta == 0:
        return p, z
    mask = p >= tail * p.max(dim=-1, keepdim=True).values
    return p, z + eta * (q - p) * mask


def _one_hot(tok: int, like: torch.Tensor) -> torch.Tensor:
    q = torch.zeros_like(like)
    q[tok] = 1.0
    return q


def rejection_residual(p: torch.Tensor, p_hat: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Where a rejected draft token's replacement comes from: ``norm(max(p - p_hat, p - q, 0))``
    (``p`` itself when that is all zero)."""
    resid = torch.clamp(torch.maximum(p - p_hat, p - q), min=0.0)
    total = float(resid.sum())
    return resid / total if total > 0 else p


@dataclass
class Verdict:
    accepted: int
    next_token: int


def verify(
    draft: Sequence[int],
    q: torch.Tensor | None,
    target_logits: torch.Tensor,
    *,
    eta: float,
    temperature: float,
    tail: float = 0.1,
    consensus: bool = False,
    residual: bool = False,
    generator: torch.Generator | None = None,
) -> Verdict:
    """Accept a prefix of ``draft`` and choose the next token.

    Args:
        draft: the ``k`` proposed tokens.
        q: the drafter's distributions ``[k, V]`` (``None``: one-hot proposals, e.g. n-gram
            lookups; they carry no drafter distribution to transfer, so they are verified
            losslessly, as with ``eta = 0``: a one-hot ``q`` would otherwise add ``eta`` to the
            looked-up token's logit and, with a large ``eta``, accept whatever the lookup copied).
        target_logits: ``[k + 1, V]`` target logits; row ``i`` predicts ``draft[i]``, row ``k``
            the bonus token.
        consensus: the shift may add acceptances but never remove one: a draft token the plain
            target accepts is accepted at any ``eta`` (greedy: it is the target's own argmax;
            sampling: accepted with probability ``min(1, max(p, p_hat)(x) / q(x))``). Without it,
            ``eta * (q - p)`` lowers a token that both models rank first whenever the target is
            surer of it than the drafter, and a large ``eta`` can then emit a token neither model
            prefers. ``eta = 0`` is unchanged either way.
        residual: greedy only: a rejected draft token is replaced by the argmax of the rejection
            residual ``max(p - p_hat, p - q, 0)`` that sampling draws from (a token the target
            rates above the drafter or above ``p_hat``), not by the argmax of ``p_hat``. The
            output is then the drafter's token where the shift lifts it to the top and a
            target-favoured token elsewhere, never a third token that only ``eta * (q - p)``
            ranks first. ``eta = 0`` (lossless: the target's argmax) is unchanged.
    """
    k = len(draft)
    if q is None:
        eta = 0.0
    for i, x in enumerate(draft):
        z = target_logits[i]
        qi = q[i].to(z.device) if q is not None else _one_hot(x, z.float())
        p, adj = adjusted_logits(z, qi, eta=eta, temperature=temperature, tail=tail)
        if temperature <= 0:
            best = int(torch.argmax(adj).item())
            if best == x or (consensus and x == int(torch.argmax(p).item())):
                continue
            if residual and eta != 0:
                best = int(torch.argmax(rejection_residual(p, torch.softmax(adj, dim=-1), qi)).item())
            return Verdict(i, best)
        p_hat = torch.softmax(adj, dim=-1) if eta != 0 else p
        qx = float(qi[x])
        px = max(float(p_hat[x]), float(p[x])) if consensus else float(p_hat[x])
        ratio = 1.0 if qx <= 0 else px / qx
        u = float(torch.rand((), generator=generator))
        if u < min(1.0, ratio):
            continue
        dist = rejection_residual(p, p_hat, qi)
        return Verdict(i, int(torch.multinomial(dist, 1, generator=generator).item()))
    z = target_logits[k].float()
    if temperature <= 0:
        return Verdict(k, int(torch.argmax(z).item()))
    p = torch.softmax(z / temperature, dim=-1)
    return Verdict(k, int(torch.multinomial(p, 1, generator=generator).item()))
