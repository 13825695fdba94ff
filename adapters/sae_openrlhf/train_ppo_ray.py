"""`openrlhf.cli.train_ppo_ray` with sae-rl's estimators:

    python -m sae_openrlhf.train_ppo_ray <any OpenRLHF flag> --algo.advantage.estimator sae \\
        --algo.advantage.sae.threshold 0.2 --algo.advantage.sae.lam 0.95
    sae-openrlhf-train-ppo ...            (the same, as a console script)

OpenRLHF builds its argument parser inside `if __name__ == "__main__":`, so this runs that very
module as `__main__` (every upstream flag and check stays as it is) with two additions:
- its parser also takes `--algo.advantage.estimator sae|vapo` and the `--algo.advantage.sae.*`
  flags (`add_flags`): one per option of sae and vapo in `sae_core.registry`, with the option's
  type, range, choices and help from there, plus `critic_lam` and this adapter's `logprobs`. An
  sae run is handed to OpenRLHF as `gae` (so it builds the critic and the GAE pipeline) with
  `args.algo.advantage.sae.estimator` telling the patched experience maker to compute sae instead
  (see `sae_openrlhf.experience`);
- its `ray.init` gets `worker_process_setup_hook: sae_openrlhf.worker_setup` in the runtime_env,
  so every Ray worker (the experience maker lives in the PPO trainer actor) installs the patch.
For any other estimator the flags, the parser and the computation are OpenRLHF's own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import runpy
import sys
from collections.abc import Iterator

from sae_core import estimator_params, registry
from sae_core.extras import MissingExtra, available
from sae_core.integration import translate

from . import ESTIMATORS, install
from .experience import ADAPTER_NAMES, ADAPTER_OPTIONS, FRAMEWORK, SOURCES

UPSTREAM = "openrlhf.cli.train_ppo_ray"
ESTIMATOR_FLAG = "--algo.advantage.estimator"
PREFIX = "algo.advantage.sae."
COMMON_OPTIONS = ("critic_lam",)  # of registry.COMMON; gamma is --algo.advantage.gamma, mask_mode is zero
SETUP_HOOK = "sae_openrlhf.worker_setup"
NEXT_HOOK_ENV = "SAE_OPENRLHF_NEXT_SETUP_HOOK"

# The last namespace the patched parser produced (flat, before OpenRLHF's hierarchize): for tests.
last_args: argparse.Namespace | None = None


def flag_options() -> dict[str, registry.Option]:
    """name -> Option of every `--algo.advantage.sae.NAME` flag, read from the registry now: the
    options of sae and vapo, critic_lam, then this adapter's own (logprobs)."""
    options = translate.registry_options(ESTIMATORS, COMMON_OPTIONS)
    options.update((o.name, o) for o in ADAPTER_OPTIONS)
    return options


def add_flags(parser: argparse.ArgumentParser) -> list[str]:
    """Add the `--algo.advantage.sae.*` flags (`flag_options`); returns their dests. Each flag's
    value is checked as the registry checks the option (a number's range, a rule's name, ...)."""
    group = parser.add_argument_group(f"sae-rl estimators (with {ESTIMATOR_FLAG} {' or '.join(ESTIMATORS)})")
    dests = []
    for name, option in flag_options().items():
        group.add_argument(f"--{PREFIX}{name}", default=None, help=_help(option), **_argparse(option))
        dests.append(PREFIX + name)
    return dests


def _help(option: registry.Option) -> str:
    text = option.help if option.default is None else f"{option.help} (default {option.default})"
    return text.replace("%", "%%")  # argparse formats help with %


def _argparse(option: registry.Option) -> dict:
    """add_argument's type, choices and nargs for `option` (by its kind)."""
    if option.kind == "rule":
        return {"choices": tuple(registry.RULES)}
    if option.kind == "choice":
        return {"choices": option.choices}
    if option.kind == "int_list":
        return {"nargs": "+", "metavar": "ID", "action": _id_list(option)}

    def convert(text: str):
        try:
            if option.kind == "float":
                try:
                    value = float(text)
                except ValueError:
                    raise argparse.ArgumentTypeError(f"a number is needed; got {text!r}") from None
                return option.check(value)
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = option.kind  # argparse names the type in some of its messages
    return {"type": convert, "metavar": option.kind.upper()}


def _id_list(option: registry.Option) -> type[argparse.Action]:
    """An action taking `--flag 13 14`, `--flag 13,14` or `--flag [13,14]` as one checked id list."""

    class IdList(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            text = " ".join(values) if values[0].lstrip().startswith("[") else ",".join(values)
            try:
                setattr(namespace, self.dest, option.parse(text))
            except ValueError as exc:
                raise argparse.ArgumentError(self, str(exc)) from None

    return IdList


def _finish(parser: argparse.ArgumentParser, ns: argparse.Namespace, dests: list[str]) -> argparse.Namespace:
    """Hand sae runs to OpenRLHF as gae, and check our flags together: options the estimator does
    not take, options that select different boundary rules, a rule whose data OpenRLHF lacks."""
    estimator = getattr(ns, "algo.advantage.estimator")
    given = [f"--{d}" for d in dests if getattr(ns, d) is not None]
    if estimator not in ESTIMATORS:
        if given:
            parser.error(f"{', '.join(given)} take effect only with {ESTIMATOR_FLAG} "
                         f"{' or '.join(ESTIMATORS)} (here: {estimator})")
        setattr(ns, PREFIX + "estimator", None)
        return ns
    options = {d[len(PREFIX):]: getattr(ns, d) for d in dests if getattr(ns, d) is not None}
    try:
        kwargs = translate.estimator_kwargs(estimator, options, adapter=ADAPTER_NAMES, strict=True)
        estimator_params(estimator, **kwargs)
        translate.data_names(estimator, kwargs, SOURCES, framework=FRAMEWORK, setting=f"--{PREFIX}boundary")
    except (ValueError, TypeError) as exc:
        parser.error(f"{ESTIMATOR_FLAG} {estimator}: {exc}")
    setattr(ns, PREFIX + "estimator", estimator)
    setattr(ns, "algo.advantage.estimator", "gae")  # OpenRLHF: build the critic, run the GAE pipeline
    return ns


@contextlib.contextmanager
def _patched_parser() -> Iterator[None]:
    """While active, a parser that has --algo.advantage.estimator also takes ours."""
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        global last_args
        action = next((a for a in self._actions if ESTIMATOR_FLAG in a.option_strings), None)
        if action is None:
            return original(self, args, namespace)
        if action.choices is not None:
            action.choices = [*action.choices, *(e for e in ESTIMATORS if e not in action.choices)]
        dests = add_flags(self)
        ns = _finish(self, original(self, args, namespace), dests)
        last_args = ns
        return ns

    argparse.ArgumentParser.parse_args = parse_args
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def with_setup_hook(runtime_env: dict | None) -> dict:
    """`runtime_env` with our worker setup hook; a hook already there runs after ours."""
    env = dict(runtime_env or {})
    previous = env.get("worker_process_setup_hook")
    if previous not in (None, SETUP_HOOK):
        if not isinstance(previous, str):
            raise ValueError("sae_openrlhf chains only a worker_process_setup_hook given by name "
                             "(module.function)")
        env["env_vars"] = {**env.get("env_vars", {}), NEXT_HOOK_ENV: previous}
    env["worker_process_setup_hook"] = SETUP_HOOK
    return env


@contextlib.contextmanager
def _patched_ray_init() -> Iterator[None]:
    import ray

    original = ray.init

    def init(*args, **kwargs):
        kwargs["runtime_env"] = with_setup_hook(kwargs.get("runtime_env"))
        return original(*args, **kwargs)

    ray.init = init
    try:
        yield
    finally:
        ray.init = original


def check_installed() -> None:
    """Raise `sae_core.extras.MissingExtra` (one line naming the `openrlhf` extra) unless OpenRLHF
    and Ray, which it runs on, are installed; imports neither."""
    for package in ("openrlhf", "ray"):
        if not available(package):
            raise MissingExtra(package, "openrlhf", "sae-openrlhf-train-ppo")


def main(argv: list[str] | None = None) -> None:
    """Run OpenRLHF's PPO trainer with sae-rl's estimators available (see the module docstring).
    Without OpenRLHF or Ray: one line on stderr naming the `openrlhf` extra, exit status 2."""
    try:
        check_installed()
    except MissingExtra as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    install()  # this process too (a local experience maker, tests)
    with _patched_parser(), _patched_ray_init():
        runpy.run_module(UPSTREAM, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
