"""What a pipeline looked like before patching, so removal can be exact and checked.

Upstream packages undo only part of what they do: DeepCache leaves every wrapped module with an
instance ``forward``, T-GATE never unpatches and leaves ``cache`` tensors, tomesd leaves
``_tome_info``; cache-dit's ``disable_cache`` leaves an instance ``forward``, statistics on the
block list and the block list moved to the end of its parent's children. The accelerators call
upstream's own undo first; the snapshot then puts back every module class, instance attribute,
hook table and the order of each module's children exactly as it was, each module found by its
name, and ``matches`` proves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from accelopt._types import Pipeline

if TYPE_CHECKING:
    from torch import nn

__all__ = ["COMPILED", "Snapshot"]

# Where accelopt.execution keeps what a denoiser compiled and captured (its graphs, their memory
# pool, its regions): a cache across trials, not a patch. A snapshot neither records it nor takes
# it away, so a removal keeps the compiled graphs and a pipeline dropped takes them with it.
COMPILED = "_accelopt_compiled"

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
    children: tuple[str, ...]  # in registration order: named_modules and state_dict follow it

    @classmethod
    def of(cls, module: nn.Module) -> _ModuleState:
        hooks = tuple(frozenset(getattr(module, t, {})) for t in _HOOK_TABLES)
        attrs, forward = frozenset(vars(module)) - {COMPILED}, vars(module).get("forward")
        return cls(type(module), attrs, forward, hooks, tuple(module._modules))


@dataclass(frozen=True)
class Snapshot:
    """The patchable state of a pipeline: its attributes and those of every module it holds."""

    pipe_attrs: frozenset[str]
    modules: tuple[tuple[str, _ModuleState], ...]

    @classmethod
    def take(cls, pipe: Pipeline) -> Snapshot:
        return cls(frozenset(vars(pipe)), tuple(_named_states(pipe)))

    def restore(self, pipe: Pipeline) -> None:
        """Put back classes, instance attributes, hook tables and children's order; leave
        parameters alone. A module is found by its name, so upstream that re-registers a child
        (its names then come in another order) gets each module's own state back."""
        for name in set(vars(pipe)) - self.pipe_attrs:
            delattr(pipe, name)
        states = dict(self.modules)
        for name, module in _named_modules(pipe):
            state = states.get(name)
            if state is None:
                continue  # a module upstream added: matches() tells
            children = module._modules
            if tuple(children) != state.children and set(children) == set(state.children):
                for key in state.children:  # in place: move each to the end, in order
                    children[key] = children.pop(key)
            if type(module) is not state.cls:
                module.__class__ = state.cls
            for attr in set(vars(module)) - state.attrs - {COMPILED}:
                del module.__dict__[attr]
            if "forward" in state.attrs:
                module.__dict__["forward"] = state.forward
            for table, keys in zip(_HOOK_TABLES, state.hooks, strict=True):
                hooks = getattr(module, table, None)
                for key in set(hooks or ()) - keys:
                    del hooks[key]  # type: ignore[union-attr]

    def matches(self, pipe: Pipeline) -> bool:
        return self == Snapshot.take(pipe)


def _named_modules(pipe: Pipeline) -> list[tuple[str, nn.Module]]:
    from torch import nn

    found = []
    for component, value in sorted(pipe.components.items()):
        if isinstance(value, nn.Module):
            found += [(f"{component}.{n}", m) for n, m in value.named_modules()]
    return found


def _named_states(pipe: Pipeline) -> list[tuple[str, _ModuleState]]:
    return [(name, _ModuleState.of(m)) for name, m in _named_modules(pipe)]
