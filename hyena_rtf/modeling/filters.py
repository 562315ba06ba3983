"""The registry of long filters: config and operator names mapped to filter classes, in one place.

``FILTERS`` names the filter classes the Hyena operator builds from a string
(``HyenaOperator(filter="rtf")``); ``MIXER_FILTERS`` names the Hyena mixers of the LM config and
the filter each one uses. Everything above the filters (operator, caches, config validation,
decoding) goes through these two tables and the :class:`~.long_filter.LongFilter` contract, so a
new filter is one class and one line in each table.
"""

from __future__ import annotations

from typing import Union

from .implicit_filter import ImplicitFilter
from .long_filter import LongFilter
from .rtf import RTF
from .s4d import S4D

__all__ = ["FILTERS", "MIXER_FILTERS", "STATE_MIXERS", "filter_class"]

FILTERS: dict[str, type[LongFilter]] = {"rtf": RTF, "implicit": ImplicitFilter, "s4d": S4D}

# LM mixer name -> filter name. The attention mixer has no long filter and is not listed.
MIXER_FILTERS: dict[str, str] = {"hyena_rtf": "rtf", "hyena": "implicit", "hyena_s4d": "s4d"}

# The mixers whose filters have a state of ``state_size`` (the ones a state-size sweep varies).
STATE_MIXERS: tuple[str, ...] = tuple(m for m, f in MIXER_FILTERS.items() if FILTERS[f].state_sized)


def filter_class(filter: Union[str, type[LongFilter]]) -> type[LongFilter]:
    """The class registered as ``filter``, or ``filter`` itself when it is a LongFilter subclass."""
    if isinstance(filter, type) and issubclass(filter, LongFilter):
        return filter
    if isinstance(filter, str) and filter in FILTERS:
        return FILTERS[filter]
    raise ValueError(f"filter must be one of {tuple(FILTERS)} or a LongFilter subclass, got {filter!r}")
