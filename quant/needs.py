"""What a run's units of work declare to a cluster scheduler: the CPUs and memory of each unit, and the
custom resources of the node that measures latency. The runner declares them from the recipe for the
duration of its run (`declaring`); the Ray executor reads them (`declared`) when it submits a unit.
The local executors need none of it."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from quant.recipe.family import FamilyRecipe
from quant.recipe.schema import Recipe
from quant.scoped import scoped


@dataclass(frozen=True)
class Needs:
    cpus: float = 1.0  # onnxruntime intra-op threads a unit uses (the recipe's bench.threads)
    memory_mb: int = 2048  # the recipe's tasks.memory_mb
    bench_resources: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # bench.resources: the target hardware

    @classmethod
    def of(cls, recipe: Recipe | FamilyRecipe) -> Needs:
        return cls(float(recipe.bench.threads), recipe.tasks.memory_mb, MappingProxyType(dict(recipe.bench.resources)))


_DECLARED: contextvars.ContextVar[Needs | None] = contextvars.ContextVar("quant_needs", default=None)
_DEFAULT = Needs()


def declared() -> Needs:
    """The needs of the run this thread belongs to (defaults outside a run)."""
    return _DECLARED.get() or _DEFAULT


def declaring(needs: Needs) -> contextlib.AbstractContextManager[Needs]:
    """Declare `needs` for the units submitted in this context (and the threads the executor starts from it)."""
    return scoped(_DECLARED, needs)
