"""Count the work a generation does, so tests can show that an accelerator skips some.

Timing tiny models on a CPU is noise; counting is exact. ``WorkCounter`` wraps the two functions
every UNet and DiT layer goes through, ``conv2d`` and ``scaled_dot_product_attention``, and counts
calls and attention score entries (batch x heads x queries x keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch.nn.functional as F

__all__ = ["WorkCounter"]


@dataclass
class WorkCounter:
    """Context manager: ``with WorkCounter() as work: pipe(...)``, then read its counts.

    Attention is counted however it is reached (diffusers' processors, T-GATE's own processor);
    a cached block skips its convolutions and attention, merged tokens shrink ``attention_scores``.
    """

    conv_calls: int = 0
    attention_calls: int = 0
    attention_scores: int = 0

    def __enter__(self) -> WorkCounter:
        self._conv, self._sdpa = F.conv2d, F.scaled_dot_product_attention

        def conv2d(*args: Any, **kwargs: Any) -> Any:
            self.conv_calls += 1
            return self._conv(*args, **kwargs)

        def sdpa(query: Any, key: Any, *args: Any, **kwargs: Any) -> Any:
            self.attention_calls += 1
            self.attention_scores += query.shape[:-1].numel() * key.shape[-2]
            return self._sdpa(query, key, *args, **kwargs)

        F.conv2d, F.scaled_dot_product_attention = conv2d, sdpa
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        F.conv2d, F.scaled_dot_product_attention = self._conv, self._sdpa
