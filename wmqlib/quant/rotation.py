"""Input rotations (QuaRot-style): an orthogonal ``R (C, C)`` applied to a linear's input.

For a linear ``y = x W^T + b`` and any orthogonal ``R`` (``R R^T = I``), ``y = (x R) (W R)^T + b``: the model
computes the same function before quantization.  Quantization then sees the rotated weight ``W R`` and, with
activation quantization, the rotated input ``x R``.  A rotation spreads a few outlier input channels over all
channels (every rotated channel is a weighted sum of all original ones), so a per-row weight range or a per-token
activation range is no longer set by the outliers alone, and 4-bit grids lose less.  The flip side: rotated
weights are close to Gaussian whatever they were before, so light-tailed (near-uniform) weight rows, which a
min / max grid already fits well, lose a little (tests/quant/test_rotation.py builds both cases).

The rotation sits right before each linear: the modules in front of it (LayerNorm, GELU, the attention output)
are untouched, so LayerNorm needs no change (QuaRot instead folds a rotation into the residual stream, which needs
RMSNorm or LayerNorm without centering; wmq rotates each linear's input on its own).  With activation quantization
``QuantLinear`` applies it online (``act(x @ R)``, one ``(C, C)`` matmul per call); weight-only, the simulated
dense weight ``Q(W R) R^T`` already computes ``(x R) Q(W R)^T``, so nothing runs online.

Matrices (``rotation_matrix``):

- ``"hadamard"``: a randomized Hadamard matrix ``R = H diag(s) / sqrt(n)`` with ``H`` an ``n x n`` matrix of
  +-1 entries with ``H H^T = n I`` and ``s`` random signs (as QuaRot uses).  ``H`` is built as a Kronecker product
  of a Sylvester matrix of order ``2^k`` and, when ``n`` is not a power of two, a Paley matrix of order
  ``m = p + 1`` (prime ``p = 3 mod 4``, Paley I) or ``m = 2 (p + 1)`` (prime ``p = 1 mod 4``, Paley II); e.g.
  12, 20, 28 (Paley II, p = 13), 36, 40 = 20 * 2, 72, 84, 384 = 12 * 32, 1536 = 12 * 128.  Other orders fall
  back to the ``"random"`` matrix (e.g. 52 or 92 would need a prime-power field or another construction; orders
  other than 1, 2 and multiples of 4 have no Hadamard matrix at all) - ``hadamard_available(n)`` says which.
- ``"random"``: a seeded random orthogonal matrix (QR of a standard Gaussian matrix, signs of ``R``'s diagonal
  moved into ``Q`` so the distribution is uniform over the orthogonal group).

A convolution is rotated as the linear on its unfolded patches it is quantized as (``qlinear.QuantConv2d``):
``R`` is ``(C k k, C k k)`` and mixes the entries of a patch.

Seeds: ``rotation_seed(name)`` (CRC-32 of the linear's name), so each linear gets its own matrix and a search
repeats exactly.
"""

from __future__ import annotations

import copy
import zlib
from typing import Mapping, Optional

import torch
from torch import Tensor, nn

from wmqlib.validate import check_choice, check_int

from .calibration import Calibration
from .points import weight_matrix

ROTATIONS = ("none", "hadamard", "random")


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, int(p ** 0.5) + 1))


def _legendre(a: int, p: int) -> int:
    """The quadratic character of ``a`` modulo the odd prime ``p``: 0, 1 or -1."""
    a %= p
    return 0 if a == 0 else (1 if pow(a, (p - 1) // 2, p) == 1 else -1)


def _paley_kind(m: int) -> Optional[tuple[int, int]]:
    """``(1, p)`` when ``m = p + 1`` with a prime ``p = 3 mod 4``, ``(2, p)`` when ``m = 2 (p + 1)`` with a prime
    ``p = 1 mod 4``, else None."""
    if _is_prime(m - 1) and (m - 1) % 4 == 3:
        return 1, m - 1
    if m % 2 == 0 and _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:
        return 2, m // 2 - 1
    return None


def _paley(m: int) -> Tensor:
    """A Hadamard matrix of order ``m`` (float64, +-1) by Paley's construction I (``H = I + S`` with the skew
    ``S = [[0, 1^T], [-1, Q]]``) or II (from the symmetric conference matrix ``S = [[0, 1^T], [1, Q]]``)."""
    kind, p = _paley_kind(m)
    idx = torch.arange(p)
    chi = torch.tensor([_legendre(a, p) for a in range(p)], dtype=torch.float64)
    q = chi[(idx[None, :] - idx[:, None]) % p]  # Jacobsthal matrix Q[i, j] = chi(j - i), (p, p)
    s = torch.zeros(p + 1, p + 1, dtype=torch.float64)
    s[0, 1:] = 1.0
    s[1:, 0] = -1.0 if kind == 1 else 1.0
    s[1:, 1:] = q
    if kind == 1:
        return torch.eye(p + 1, dtype=torch.float64) + s
    a = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)  # replaces each +-1 of S
    b = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)  # replaces each 0 (the diagonal) of S
    return torch.kron(s, a) + torch.kron(torch.eye(p + 1, dtype=torch.float64), b)


def _factor(n: int) -> Optional[tuple[int, int]]:
    """``(m, 2^k)`` with ``n = m 2^k`` and a Paley order ``m`` (or ``m = 1``), or None."""
    power = 1
    while n % power == 0:
        m = n // power
        if m == 1 or _paley_kind(m) is not None:
            return m, power
        power *= 2
    return None


def hadamard_available(n: int) -> bool:
    """True when ``rotation_matrix(n, "hadamard", ...)`` is a Hadamard matrix (else it is a random orthogonal one)."""
    check_int("n", n, 1)
    return _factor(n) is not None


def hadamard(n: int) -> Tensor:
    """An unnormalized Hadamard matrix ``(n, n)`` float64 with entries +-1 and ``H H^T = n I``.

    ``ValueError`` when ``n`` is not ``2^k`` times a Paley order (``hadamard_available``)."""
    factor = _factor(n)
    if factor is None:
        raise ValueError(f"no Hadamard matrix of order {n} is built here: n must be 2^k, or 2^k times p + 1 (prime "
                         "p = 3 mod 4) or 2 (p + 1) (prime p = 1 mod 4)")
    m, power = factor
    h = torch.ones(1, 1, dtype=torch.float64)
    sylvester = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    while h.shape[0] < power:
        h = torch.kron(h, sylvester)
    return h if m == 1 else torch.kron(_paley(m), h)


def random_orthogonal(n: int, generator: torch.Generator) -> Tensor:
    """A random orthogonal ``(n, n)`` float64 matrix, uniform over the orthogonal group (QR with signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def rotation_matrix(n: int, kind: str, seed: int) -> Tensor:
    """The orthogonal rotation ``R (n, n)`` float32 of ``kind`` ("hadamard" | "random"), see the module docstring.

    "hadamard" gives ``H diag(s) / sqrt(n)`` (entries +-1/sqrt(n)) when ``hadamard_available(n)``, else the
    "random" matrix of the same seed.  Same ``(n, kind, seed)``, same matrix.
    """
    check_int("n", n, 1)
    check_choice("kind", kind, ROTATIONS[1:])
    check_int("seed", seed, 0)
    generator = torch.Generator().manual_seed(seed)
    if kind == "hadamard" and hadamard_available(n):
        signs = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64) * 2 - 1
        return (hadamard(n) * signs[None, :] / n ** 0.5).float()
    return random_orthogonal(n, generator).float()


def rotation_seed(name: str) -> int:
    """The seed of a linear's rotation: CRC-32 of its module name (stable across runs and machines)."""
    return zlib.crc32(name.encode())


def rotate_rows(x: Tensor, rotation: Tensor) -> Tensor:
    """``x (..., C) @ R (C, C)`` in float32."""
    return x.float() @ rotation.to(x.device)


class RotatedCalibration:
    """A read-only view of a ``Calibration`` in which the inputs of some linears are rotated: ``rows @ R``.

    The per-channel statistics of a rotated linear (``absmean``, ``absmax``, ``channel_range``) are recomputed from
    its rotated reservoir sample (``rows``, at most ``max_tokens`` rows), not from the full stream the running
    statistics cover (those are per original channel and cannot be rotated).  Linears without a rotation, unit
    sequences (unit inputs sit before the rotation) and everything else read through to ``base``.

    Args:
        base: the captured calibration.
        rotations: ``{linear name: R (C_in, C_in)}``.
    """

    def __init__(self, base: Calibration, rotations: Mapping[str, Tensor]) -> None:
        self.base = base
        self.rotations = dict(rotations)
        self.max_tokens, self.max_sequences, self.seed = base.max_tokens, base.max_sequences, base.seed
        self._rows: dict[str, Tensor] = {}

    @property
    def linears(self) -> list[str]:
        """Names of the linears with statistics."""
        return self.base.linears

    @property
    def units(self) -> list[str]:
        """Names of the units with sampled inputs."""
        return self.base.units

    def require(self, names: list[str], why: str) -> None:
        """As ``Calibration.require``."""
        self.base.require(names, why)

    def rows(self, name: str) -> Tensor:
        """The reservoir sample of ``name``'s inputs, rotated when ``name`` has a rotation: ``(k, C)`` float32."""
        if name not in self.rotations:
            return self.base.rows(name)
        if name not in self._rows:
            self._rows[name] = rotate_rows(self.base.rows(name), self.rotations[name])
        return self._rows[name]

    def absmean(self, name: str) -> Tensor:
        """Per-channel mean ``|x|``, ``(C,)`` (rotated: over the reservoir sample)."""
        return self.rows(name).abs().mean(0) if name in self.rotations else self.base.absmean(name)

    def absmax(self, name: str) -> Tensor:
        """Per-channel max ``|x|``, ``(C,)`` (rotated: over the reservoir sample)."""
        return self.rows(name).abs().amax(0) if name in self.rotations else self.base.absmax(name)

    def channel_range(self, name: str) -> tuple[Tensor, Tensor]:
        """Per-channel ``(min, max)``, each ``(C,)`` (rotated: over the reservoir sample)."""
        if name not in self.rotations:
            return self.base.channel_range(name)
        rows = self.rows(name)
        return rows.amin(0), rows.amax(0)

    def tokens_seen(self, name: str) -> int:
        """As ``Calibration.tokens_seen`` (the rows the unrotated running statistics cover)."""
        return self.base.tokens_seen(name)

    def sequences(self, unit: str) -> list[Tensor]:
        """As ``Calibration.sequences``: whole unit inputs, which come before any rotation."""
        return self.base.sequences(unit)


def rotated_model(model: nn.Module, rotations: Mapping[str, Tensor]) -> nn.Module:
    """A deep copy of ``model`` whose linears named in ``rotations`` have weight ``W R`` (computed in float32).

    The copy is what a search sees: fed ``x @ R`` at those linears it computes what ``model`` computes on ``x``.
    """
    view = copy.deepcopy(model)
    for name, rotation in rotations.items():
        matrix = weight_matrix(view.get_submodule(name))  # a convolution's (O, C k k) view of its weight
        with torch.no_grad():
            matrix.copy_(rotate_rows(matrix, rotation).to(matrix.dtype))
    return view
