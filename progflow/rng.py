"""Randomness derived from (seed, step) so runs resume and shard exactly.

Every random draw of a training step comes from a generator seeded by the run seed and
the step number, drawn for the *global* batch; each process keeps only its own rows. So a
resumed run needs no saved generator state to continue bit for bit, and two processes
under DDP see exactly the noise, times and label drops that one process would.
"""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence hashing)."""
    words = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return (int(words[0]) | (int(words[1]) << 32)) & ((1 << 63) - 1)


def generator(*parts: int, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))


class BatchRandom:
    """Draws for a global batch of ``global_batch`` samples; returns the rows ``rows``.

    >>> a = BatchRandom(0, 5, 4, slice(0, 4)).randn(3)
    >>> b = BatchRandom(0, 5, 4, slice(2, 4)).randn(3)
    >>> bool((a[2:] == b).all())
    True
    """

    def __init__(self, seed: int, step: int, global_batch: int, rows: slice, device="cpu"):
        self.gen = generator(seed, step)
        self.step = step  # for methods whose step k trains one part of the model (a cascade)
        self.global_batch = global_batch
        self.rows = rows
        self.device = device

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(self.global_batch, *shape, generator=self.gen)[self.rows].to(self.device)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(self.global_batch, *shape, generator=self.gen)[self.rows].to(self.device)

    def categorical(self, probs) -> torch.Tensor:
        """One index per sample drawn from ``probs``."""
        p = torch.as_tensor(probs, dtype=torch.float64)
        return torch.multinomial(p, self.global_batch, replacement=True, generator=self.gen)[self.rows].to(self.device)

    def categorical_shared(self, probs) -> int:
        """One index for the whole batch."""
        p = torch.as_tensor(probs, dtype=torch.float64)
        return int(torch.multinomial(p, 1, generator=self.gen))
