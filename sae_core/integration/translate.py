"""A framework's settings as `compute_advantages` arguments: what sae_verl and sae_openrlhf share.

Every option's name, type, range, default and help comes from `sae_core.registry`. An adapter
declares only which of `registry.COMMON` it exposes and its own few settings (which log-probs to
read, whitening, ...); adding a boundary rule and its option to the registry makes both adapters
accept the option with no edit here or there. Defaults are never filled in here: an option that
is not set is not passed, and `compute_advantages` applies the registry's default
(`registry.make_spec`).

Per-token data ([B, T] tensors in the framework's batch) is named by `registry.DATA`: `logprobs`,
`response_ids`, `entropy`, `given_boundaries`; an adapter maps each name it can serve to an
accessor, and `per_token_data` asks only for what the chosen boundary rule reads.

Nothing here imports a framework.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .. import registry

# The registry's estimators the adapters add to a framework: gae is the frameworks' own, and mc is
# gae at lam = 1.
ADDED_ESTIMATORS = ("sae", "vapo")

# Where a wrapper made by `wrap_once` keeps the function it wraps.
ORIGINAL = "__sae_rl_original__"


# ----------------------------------------------------------------------------------------------
# options


def option_names(estimators: Iterable[str], common: Iterable[str] = (), adapter: Iterable[str] = ()
                 ) -> tuple[str, ...]:
    """The settings an adapter knows, each once, in this order: the options of `estimators`
    (`registry.ESTIMATORS[name].options`, read now, so a rule added to the registry is known), the
    named `registry.COMMON` arguments, then the adapter's own settings."""
    names = [o for e in estimators for o in registry.check_estimator(e).options]
    for name in common:
        if name not in registry.COMMON:
            raise ValueError(f"{name!r} is not one of registry.COMMON ({', '.join(registry.COMMON)})")
        names.append(name)
    return tuple(dict.fromkeys([*names, *adapter]))


def registry_options(estimators: Iterable[str], common: Iterable[str] = ()) -> dict[str, registry.Option]:
    """name -> `registry.Option` for every name of `option_names(estimators, common)`."""
    return {name: registry.OPTIONS[name] if name in registry.OPTIONS else registry.COMMON[name]
            for name in option_names(estimators, common)}


def estimator_kwargs(estimator: str, settings: Mapping[str, Any], *, adapter: Iterable[str] = (),
                     strict: bool = False, **fixed: Any) -> dict[str, Any]:
    """`compute_advantages`' scalar keyword arguments for `estimator` from a framework's settings.

    settings: name -> value, None meaning not set. Taken: the options `estimator` takes and the
    `registry.COMMON` arguments that are set; then `fixed` (e.g. gamma=..., mask_mode="zero"),
    whose None values are dropped. Left out: the `adapter` names (the adapter's own settings) and
    the options of other estimators (one settings section serves both sae and vapo), unless
    strict=True, which raises the registry's TypeError for them. Values are checked by the
    callee (`registry.estimator_params` or `compute_advantages`), not here.
    """
    adapter = set(adapter)
    given = {k: v for k, v in settings.items() if v is not None and k not in adapter}
    if strict:
        registry.check_options(estimator, {k: v for k, v in given.items() if k not in registry.COMMON})
    return registry.run_options(estimator, given, fixed)


# ----------------------------------------------------------------------------------------------
# per-token data


def needed_data(estimator: str, kwargs: Mapping[str, Any]) -> tuple[str, ...]:
    """The per-token data (keys of `registry.DATA`, also `compute_advantages`' keyword names) that
    `estimator` with the scalar `kwargs` reads: ("logprobs",) for sae's default rule, () for vapo.
    Raises ValueError, as `compute_advantages` would, when the options select different rules."""
    return registry.needed_data(estimator, registry.boundary_rule(estimator, kwargs))


def data_names(estimator: str, kwargs: Mapping[str, Any], available: Iterable[str], *, framework: str,
               setting: str) -> tuple[str, ...]:
    """`needed_data(estimator, kwargs)`, after checking that the adapter can serve each name
    (`available`). ValueError otherwise, naming the rule, the data and `setting` (where the user
    chooses the rule), e.g. for the rule "given", whose boundaries no framework stores."""
    names = needed_data(estimator, kwargs)
    available = set(available)
    for name in names:
        if name not in available:
            rule = registry.boundary_rule(estimator, kwargs)
            raise ValueError(f"{setting}={rule}: the boundary rule {rule!r} reads {name} "
                             f"({registry.DATA[name].help}), which {framework} cannot provide; "
                             "choose another boundary rule")
    return names


def per_token_data(estimator: str, kwargs: Mapping[str, Any], sources: Mapping[str, Callable[[], Any]], *,
                   framework: str, setting: str) -> dict[str, Any]:
    """The per-token keyword arguments of `compute_advantages` for `estimator` with `kwargs`: each
    name `needed_data` gives, as `sources[name]()`. A source raises its own error, naming what to
    set, when the framework did not store its data this step; a name without a source raises as
    `data_names` does."""
    names = data_names(estimator, kwargs, sources, framework=framework, setting=setting)
    return {name: sources[name]() for name in names}


def choose_logprobs(choice: str, keys: Sequence[str], get: Callable[[str], Any], *, setting: str
                    ) -> tuple[tuple[str, ...], Any]:
    """The behaviour log-probs a setting chooses among a framework's ordered `keys`.

    choice: "auto" (the first key whose value is present) or one of `keys`; anything else raises
    ValueError naming `setting`. get(key): the framework's [B, T] tensor, or None when absent.
    Returns (the keys tried, the value found or None); the caller words the error for None.
    """
    if choice == "auto":
        tried = tuple(keys)
    elif choice in keys:
        tried = (choice,)
    else:
        names = ("auto", *keys)
        raise ValueError(f"{setting} must be {', '.join(names[:-1])} or {names[-1]}; got {choice!r}")
    for key in tried:
        value = get(key)
        if value is not None:
            return tried, value
    return tried, None


# ----------------------------------------------------------------------------------------------
# patching a framework's functions


def wrap_once(original: Callable, make_wrapper: Callable[[Callable], Callable]) -> Callable:
    """`make_wrapper(original)`, carrying original's name, docstring and `__wrapped__`, and
    `original` under the attribute ORIGINAL. When `original` already is such a wrapper it is
    returned as it is, so a second install or a reloaded adapter wraps nothing twice."""
    if hasattr(original, ORIGINAL):
        return original
    wrapper = functools.update_wrapper(make_wrapper(original), original)
    setattr(wrapper, ORIGINAL, original)
    return wrapper


def wrap_attribute(owner: Any, name: str, make_wrapper: Callable[[Callable], Callable]) -> None:
    """Replace `owner.name` (a module's function, or a method defined on the class `owner` itself,
    not inherited) by `wrap_once(it, make_wrapper)`; nothing when `owner` has no such attribute."""
    found = vars(owner).get(name)
    if found is not None:
        setattr(owner, name, wrap_once(found, make_wrapper))


__all__ = [
    "ADDED_ESTIMATORS", "ORIGINAL", "choose_logprobs", "data_names", "estimator_kwargs", "needed_data",
    "option_names", "per_token_data", "registry_options", "wrap_attribute", "wrap_once",
]
