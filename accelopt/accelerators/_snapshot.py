"""What a pipeline looked like before patching, so removal can be exact and checked.

Upstream packages undo only part of what they do: DeepCache leaves every wrapped module with an
instance ``forward``, T-GATE never unpatches and leaves ``cache`` tensors, tomesd leaves
``_tome_info``. The accelerators call upstream's own undo first; the snapshot then puts back every
module class, instance attribute and hook table exactly as it was, and ``matches`` proves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from accelopt._types import Pipeline

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Snapshot"]

_HOOK_TABLES = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


@dataclass(frozen=True)
class _ModuleState:
    cls: type
    attrs: frozenset[str]
    forward: Any  # the instance-level forward, if the module had one
    hooks: tuple[frozenset[int], ...]

    @classmethod
    def of(cls, module: nn.Module) -> _ModuleState:
        hooks = tuple(frozenset(getattr(module, t, {})) for t in _HOOK_TABLES)
        return cls(type(module), frozenset(vars(module)), vars(module).get("forward"), hooks)


@dataclass(frozen=True)
class Snapshot:
    """The patchable state of a pipeline: its attributes and those of every module it holds."""

    pipe_attrs: frozenset[str]
    modules: tuple[tuple[str, _ModuleState], ...]

    @classmethod
    def take(cls, pipe: Pipeline) -> Snapshot:
        return cls(frozenset(vars(pipe)), tuple(_named_states(pipe)))

    def restore(self, pipe: Pipeline) -> None:
        """Put back classes, instance attributes and hook tables; leave parameters alone."""
        for name in set(vars(pipe)) - self.pipe_attrs:
            delattr(pipe, name)
        for module, state in zip(_modules(pipe), (s for _, s in self.modules), strict=True):
            if type(module) is not state.cls:
                module.__class__ = state.cls
            for attr in set(vars(module)) - state.attrs:
                del module.__dict__[attr]
            if "forward" in state.attrs:
                module.__dict__["forward"] = state.forward
            for table, keys in zip(_HOOK_TABLES, state.hooks, strict=True):
                hooks = getattr(module, table, None)
                for key in set(hooks or ()) - keys:
                    del hooks[key]  # type: ignore[union-attr]

    def matches(self, pipe: Pipeline) -> bool:
        return self == Snapshot.take(pipe)


def _modules(pipe: Pipeline) -> list[nn.Module]:
    return [m for _, m in _named_modules(pipe)]


def _named_modules(pipe: Pipeline) -> list[tuple[str, nn.Module]]:
    from torch import nn

    found = []
    for component, value in sorted(pipe.components.items()):
        if isinstance(value, nn.Module):
            found += [(f"{component}.{n}", m) for n, m in value.named_modules()]
    return found


def _named_states(pipe: Pipeline) -> list[tuple[str, _ModuleState]]:
    return [(name, _ModuleState.of(m)) for name, m in _named_modules(pipe)]
