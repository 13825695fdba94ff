"""`openrlhf.cli.train_ppo_ray` with sae-rl's estimators:

    python -m sae_openrlhf.train_ppo_ray <any OpenRLHF flag> --algo.advantage.estimator sae \\
        --algo.advantage.sae.threshold 0.2 --algo.advantage.sae.lam 0.95
    sae-openrlhf-train-ppo ...            (the same, as a console script)

OpenRLHF builds its argument parser inside `if __name__ == "__main__":`, so this runs that very
module as `__main__` (every upstream flag and check stays as it is) with two additions:
- its parser also takes `--algo.advantage.estimator sae|vapo` and the `--algo.advantage.sae.*`
  flags below; an sae run is handed to OpenRLHF as `gae` (so it builds the critic and the GAE
  pipeline) with `args.algo.advantage.sae.estimator` telling the patched experience maker to
  compute sae instead (see `sae_openrlhf.experience`);
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

from . import ESTIMATORS, install

UPSTREAM = "openrlhf.cli.train_ppo_ray"
ESTIMATOR_FLAG = "--algo.advantage.estimator"
PREFIX = "algo.advantage.sae."
SETUP_HOOK = "sae_openrlhf.worker_setup"
NEXT_HOOK_ENV = "SAE_OPENRLHF_NEXT_SETUP_HOOK"

# The last namespace the patched parser produced (flat, before OpenRLHF's hierarchize): for tests.
last_args: argparse.Namespace | None = None


def _probability(text: str) -> float:
    x = _float(text)
    if not 0.0 < x <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability in (0, 1] is needed; got {text}")
    return x


def _unit(text: str) -> float:
    x = _float(text)
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"a number in [0, 1] is needed; got {text}")
    return x


def _float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number is needed; got {text!r}") from None
    if x != x:
        raise argparse.ArgumentTypeError("a number is needed; got nan")
    return x


def add_flags(parser: argparse.ArgumentParser) -> list[str]:
    """Add the `--algo.advantage.sae.*` flags; returns their dests."""
    group = parser.add_argument_group("sae-rl estimators (with --algo.advantage.estimator sae or vapo)")
    flags = [
        ("threshold", dict(type=_probability, help="sae: a token whose behaviour probability is below this starts "
                                                   "a segment (default 0.2, the paper's)")),
        ("lam", dict(type=_unit, help="sae: lambda at segment boundaries (default 0.95, the paper's; "
                                      "--algo.advantage.lambd stays GAE's)")),
        ("critic_lam", dict(type=_unit, help="lambda of decoupled critic targets (default: R = A + V)")),
        ("boundary", dict(choices=("logprob", "fixed", "delimiter", "quantile"),
                          help="sae's boundary rule (default logprob)")),
        ("segment_length", dict(type=int, help="boundary rule fixed: segment length in valid tokens")),
        ("delimiter_ids", dict(type=int, nargs="+", help="boundary rule delimiter: token ids that end a segment")),
        ("quantile", dict(type=_unit, help="boundary rule quantile: the per-response quantile of log-probs")),
        ("alpha", dict(type=float, help="vapo: alpha of lambda = 1 - 1 / (alpha * length) (default 0.05)")),
        ("logprobs", dict(choices=("auto", "rollout_log_probs", "action_log_probs"),
                          help="which log-probs mark boundaries (default auto: rollout_log_probs when present)")),
    ]
    dests = []
    for name, kwargs in flags:
        group.add_argument(f"--{PREFIX}{name}", default=None, **kwargs)
        dests.append(PREFIX + name)
    return dests


def _finish(parser: argparse.ArgumentParser, ns: argparse.Namespace, dests: list[str]) -> argparse.Namespace:
    """Hand sae runs to OpenRLHF as gae, and check our flags."""
    estimator = getattr(ns, "algo.advantage.estimator")
    given = [f"--{d}" for d in dests if getattr(ns, d) is not None]
    if estimator not in ESTIMATORS:
        if given:
            parser.error(f"{', '.join(given)} take effect only with {ESTIMATOR_FLAG} sae or vapo "
                         f"(here: {estimator})")
        setattr(ns, PREFIX + "estimator", None)
        return ns
    options = {d[len(PREFIX):]: getattr(ns, d) for d in dests if getattr(ns, d) is not None}
    options.pop("logprobs", None)
    from sae_core.estimators import estimator_params

    try:
        estimator_params(estimator, **options, require_data=False)
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
            raise ValueError("sae_openrlhf chains only a worker_process_setup_hook given by name (module.function)")
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


def main(argv: list[str] | None = None) -> None:
    """Run OpenRLHF's PPO trainer with sae-rl's estimators available (see the module docstring)."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    install()  # this process too (a local experience maker, tests)
    with _patched_parser(), _patched_ray_init():
        runpy.run_module(UPSTREAM, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
