"""Search spaces in Hydra's override grammar, as Optuna distributions.

    model=choice(nscnet,resnet18,small_cnn)          -> categorical
    optimizer.lr=tag(log,interval(1e-4,1e-2))        -> log-uniform float
    data.batch_size=range(32,257,step=32)            -> int with step (stop exclusive, as in Hydra)
    augmentation.magnitude=interval(0.5,1.5)         -> uniform float

Values go back to Hydra as override strings, so a trial is just a list of ordinary overrides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from nscfate.errors import NscfateError


@dataclass
class SearchSpace:
    """The swept parameters (name -> distribution) and the fixed overrides that go with every trial."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    def overrides(self, params: Mapping[str, object]) -> list[str]:
        """A trial's parameters as Hydra overrides (plus the fixed ones)."""
        return [*self.fixed, *(f"{name}={_encode(value)}" for name, value in params.items())]

    def grid(self) -> dict[str, list]:
        """The space as a grid (for GridSampler): only choices and stepped ranges have one."""
        grid = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                grid[name] = list(dist.choices)
            elif isinstance(dist, IntDistribution) and not dist.log:
                grid[name] = list(range(dist.low, dist.high + 1, dist.step))
            else:
                raise NscfateError(
                    f"search.sampler=grid needs choice(...) or range(...) values, but {name} is continuous"
                )
        return grid


def _encode(value: object) -> str:
    """A parameter value as Hydra override text (strings escaped, floats exact, bools lower-case)."""
    if isinstance(value, str):
        return Transformer.encode(value)
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return repr(value) if isinstance(value, float) else str(value)


def parse_space(arguments: Iterable[str]) -> SearchSpace:
    """Parse command-line / config overrides into a SearchSpace; sweeps become distributions."""
    space = SearchSpace()
    arguments = list(arguments)
    for arg in arguments:
        if re.search(r"=\s*choice\(\s*\)\s*$", arg):
            raise NscfateError(f"{arg}: an empty choice; list at least one value")
    parser = OverridesParser.create()
    try:
        overrides = parser.parse_overrides(arguments)
    except Exception as err:  # Hydra's grammar errors are precise but long
        raise NscfateError(f"cannot parse the search space: {str(err).splitlines()[0]}") from err
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            space.distributions[key] = distribution(override)
        else:
            space.fixed.append(f"{key}={override.get_value_element_as_str()}")
    return space


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override, with the value checked."""
    key, value = override.get_key_element(), override.value()
    if isinstance(value, ChoiceSweep):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        if not choices:
            raise NscfateError(f"{key}=choice(): an empty choice; list at least one value")
        return CategoricalDistribution(choices)  # Hydra already typed them (int, float, bool, str)
    if isinstance(value, RangeSweep):
        return _range(key, override, value)
    if isinstance(value, IntervalSweep):
        return _interval(key, value)
    raise NscfateError(
        f"{key}: sweep type {type(value).__name__} is not supported (use choice, range, interval)"
    )


def _range(key: str, override: Override, value: RangeSweep) -> BaseDistribution:
    if value.shuffle:
        return CategoricalDistribution(
            list(override.sweep_iterator(transformer=Transformer.encode))
        )
    start, stop, step = value.start, value.stop, value.step
    if start is None or stop is None or step is None or step <= 0 or start >= stop:
        raise NscfateError(
            f"{key}=range({start},{stop},step={step}): expected start < stop and step > 0"
        )
    if all(isinstance(v, int) for v in (start, stop, step)):
        last = start + ((stop - 1 - start) // step) * step  # Hydra's stop is exclusive
        return IntDistribution(start, last, step=step)
    return FloatDistribution(float(start), float(stop) - float(step), step=float(step))


def _interval(key: str, value: IntervalSweep) -> BaseDistribution:
    low, high, log = value.start, value.end, "log" in (value.tags or set())
    if low is None or high is None or low >= high:
        raise NscfateError(f"{key}=interval({low},{high}): expected low < high")
    if log and low <= 0:
        raise NscfateError(f"{key}=tag(log,interval({low},{high})): a log interval needs low > 0")
    if isinstance(low, int) and isinstance(high, int):
        return IntDistribution(low, high, log=log)
    return FloatDistribution(float(low), float(high), log=log)
