"""Hadamard matrices: square +-1 matrices with H H^T = n I, for the PHI-S rotation.

Constructions: Sylvester (orders 2^k), Paley I (q + 1 for a prime q = 3 mod 4), Paley II (2 (q + 1) for a prime
q = 1 mod 4) and Kronecker products of any two constructible orders. That covers every teacher width RADIO uses
(256, 384, 768, 1024, 1152, 1280, 1536, ...). An order with no Hadamard matrix (not 1, 2 or a multiple of 4) or
with none of these constructions is an error, never an approximation. Paley constructions are only implemented
for prime q (not prime powers).

References: Sylvester (1867); Paley, "On orthogonal matrices" (1933); PHI-S (Ranzinger et al., 2024).
"""
from __future__ import annotations

import math
from functools import cache

import torch
from torch import Tensor


class HadamardError(ValueError):
    """No Hadamard matrix of the asked order exists, or none of the implemented constructions gives one."""


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    if q % 2 == 0:
        return q == 2
    return all(q % d for d in range(3, math.isqrt(q) + 1, 2))


def _jacobsthal(q: int) -> Tensor:
    """(q, q) matrix Q[i, j] = chi(j - i) with chi the quadratic character of GF(q), q prime."""
    residues = torch.zeros(q, dtype=torch.int64)
    residues[(torch.arange(1, q) ** 2) % q] = 1
    chi = torch.where(residues.bool(), 1, -1)
    chi[0] = 0
    idx = torch.arange(q)
    return chi[(idx.view(1, -1) - idx.view(-1, 1)) % q]


def sylvester(n: int) -> Tensor:
    """Sylvester's Hadamard matrix of order n = 2^k (int64)."""
    if n < 1 or n & (n - 1):
        raise HadamardError(f"Sylvester's construction needs a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.int64)
    base = torch.tensor([[1, 1], [1, -1]], dtype=torch.int64)
    while h.shape[0] < n:
        h = torch.kron(base, h)
    return h


def _bordered_jacobsthal(q: int, first_column: int) -> Tensor:
    """(q + 1, q + 1): [[0, 1^T], [first_column * 1, Q]] with Q the Jacobsthal matrix of GF(q)."""
    m = torch.zeros(q + 1, q + 1, dtype=torch.int64)
    m[0, 1:] = 1
    m[1:, 0] = first_column
    m[1:, 1:] = _jacobsthal(q)
    return m


def paley1(q: int) -> Tensor:
    """Paley I: order q + 1 for a prime q = 3 (mod 4). H = I + S, S = [[0, 1^T], [-1, Q]] skew-symmetric."""
    if not (_is_prime(q) and q % 4 == 3):
        raise HadamardError(f"Paley I needs a prime q = 3 mod 4, got {q}")
    return torch.eye(q + 1, dtype=torch.int64) + _bordered_jacobsthal(q, -1)


def paley2(q: int) -> Tensor:
    """Paley II: order 2 (q + 1) for a prime q = 1 (mod 4), from the symmetric conference matrix
    C = [[0, 1^T], [1, Q]]: each 0 of C becomes [[1, -1], [-1, -1]] and each +-1 becomes +-[[1, 1], [1, -1]]."""
    if not (_is_prime(q) and q % 4 == 1):
        raise HadamardError(f"Paley II needs a prime q = 1 mod 4, got {q}")
    plus = torch.tensor([[1, 1], [1, -1]], dtype=torch.int64)
    zero = torch.tensor([[1, -1], [-1, -1]], dtype=torch.int64)
    return torch.kron(_bordered_jacobsthal(q, 1), plus) + torch.kron(torch.eye(q + 1, dtype=torch.int64), zero)


@cache
def construction(n: int) -> str | None:
    """A recipe string for order n ("sylvester", "paley1(q)", "paley2(q)", "AxB"), or None if none is known."""
    if n in (1, 2) or (n > 0 and n & (n - 1) == 0):
        return "sylvester"
    if n < 1 or n % 4:
        return None
    if _is_prime(n - 1) and (n - 1) % 4 == 3:
        return f"paley1({n - 1})"
    if n % 2 == 0 and _is_prime(n // 2 - 1) and (n // 2 - 1) % 4 == 1:
        return f"paley2({n // 2 - 1})"
    for a in range(2, math.isqrt(n) + 1):
        if n % a == 0 and construction(a) is not None and construction(n // a) is not None:
            return f"{a}x{n // a}"
    return None


def hadamard(n: int) -> Tensor:
    """A Hadamard matrix of order n (int64 entries +-1, H H^T = n I); raises HadamardError if none is known."""
    recipe = construction(n)
    if recipe is None:
        why = ("no Hadamard matrix exists for orders other than 1, 2 and multiples of 4" if n < 1 or
               (n > 2 and n % 4) else "no Sylvester/Paley/Kronecker construction is implemented for it")
        raise HadamardError(f"no Hadamard matrix of order {n}: {why}")
    if recipe == "sylvester":
        return sylvester(n)
    if recipe.startswith("paley1"):
        return paley1(n - 1)
    if recipe.startswith("paley2"):
        return paley2(n // 2 - 1)
    a, b = (int(v) for v in recipe.split("x"))
    return torch.kron(hadamard(a), hadamard(b))


def normalized_hadamard(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """H / sqrt(n): an orthogonal matrix whose entries all have magnitude 1/sqrt(n)."""
    return hadamard(n).to(dtype) / math.sqrt(n)
