"""The registry of named evaluation protocols (as stylegan3's ``metric_main.register_metric``;
CONTRIBUTING.md: how to add a metric or benchmark).

A protocol is a function ``(ctx: EvalContext, cfg: DictConfig) -> ProtocolResult`` registered under its name;
``conf/eval/protocols/*.yaml`` lists the protocols to run by name with their settings. Users add their own
(e.g. a VoxCeleb cross-identity benchmark) with ``@register_protocol("my_protocol")`` in an imported module.
"""

from __future__ import annotations

from collections.abc import Callable

PROTOCOLS: dict[str, Callable] = {}


def register_protocol(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as protocol ``name`` (names are unique)."""

    def deco(fn: Callable) -> Callable:
        if name in PROTOCOLS and PROTOCOLS[name] is not fn:
            raise ValueError(f"protocol {name!r} is already registered ({PROTOCOLS[name].__module__})")
        PROTOCOLS[name] = fn
        return fn

    return deco


def get_protocol(name: str) -> Callable:
    """The protocol registered as ``name`` (``KeyError`` lists the known ones)."""
    import lp_eval.protocols  # noqa: F401  deferred: protocols.py imports this module to register the built-ins

    if name not in PROTOCOLS:
        raise KeyError(f"unknown evaluation protocol {name!r}; registered: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]
