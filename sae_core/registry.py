"""The one registry: every estimator, boundary rule, option, default and per-token data column.

Nothing else in sae-rl spells these out. The public API checks its arguments here
(`make_spec`), the trajectory standard derives the columns an estimator reads and the parameters a
file records, `sae recompute` parses `NAME:k=v` here (`parse_run`), and both adapters build their
flags and config checks from `OPTIONS` and `ESTIMATORS`. Adding a boundary rule to `RULES` (and
its option to `OPTIONS`) makes every command line and adapter accept it; the backends still need
its boundary flags (`sae_core.schedules` first, then each kernel).

The math each estimator implements (per response, tokens t = 0..T-1, `lambda_t` multiplies
A_next(t)) is in `sae_core.schedules`.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .types import EstimatorSpec

INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Option:
    """A scalar option: its type, range, default and one-line help.

    kind: "float", "int", "int_list" (non-empty, sorted, distinct int64 ids), "choice" (one of
    `choices`) or "rule" (a name in RULES, looked up when checked).
    low/high: the closed range of a number, unless `low_open`/`high_open`; None: unbounded.
    default: the value when not given; None: no default (the option is then optional, or, for a
    rule's selecting option, required by its rule).
    """

    name: str
    kind: str
    help: str
    default: Any = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()

    def range_text(self) -> str:
        lo = "" if self.low is None else ("(" if self.low_open else "[") + f"{self.low:g}"
        hi = "" if self.high is None else f"{self.high:g}" + (")" if self.high_open else "]")
        return f"{lo}, {hi}" if lo and hi else (f"> {self.low:g}" if self.low_open else "")

    def check(self, value: Any) -> Any:
        """`value` (a Python number, numpy scalar, 0-d tensor, list, ...) checked and normalised:
        float, int, tuple of ints or str. Raises ValueError naming the option."""
        if self.kind == "rule":
            if value not in RULES:
                raise ValueError(f"{self.name} must be one of {tuple(RULES)}; got {value!r}")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{self.name} must be one of {self.choices}; got {value!r}")
            return value
        if self.kind == "int_list":
            return token_ids(self.name, value)
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not (
                    (self.low is None or value >= self.low) and (self.high is None or value <= self.high)):
                top = "2**63 - 1" if self.high == INT64_MAX else "any size" if self.high is None else f"{self.high:g}"
                raise ValueError(f"{self.name} must be an integer from {self.low:g} to {top}; got {value!r}")
            return int(value)
        x = scalar(self.name, value)
        below = self.low is not None and (x <= self.low if self.low_open else x < self.low)
        above = self.high is not None and (x >= self.high if self.high_open else x > self.high)
        if below or above:
            if self.name == "threshold":
                raise ValueError(f"threshold is a probability in (0, 1]; got {x}")
            if self.low_open and self.high is None:
                raise ValueError(f"{self.name} must be > {self.low:g}; got {x}")
            raise ValueError(f"{self.name} must be in {self.range_text()}; got {x}")
        return x

    def parse(self, text: str) -> Any:
        """A command-line string as this option's value (checked): JSON where it parses, so
        "0.1", "8" and "[13, 14]" work, and "13,14" for an id list."""
        if self.kind == "int_list" and not text.strip().startswith("["):
            try:
                return self.check([int(x) for x in text.split(",") if x.strip()])
            except ValueError:
                raise ValueError(f"{self.name} must be comma-separated integer token ids; got {text!r}") from None
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        if self.kind in ("choice", "rule"):
            value = text
        return self.check(value)


@dataclass(frozen=True)
class Data:
    """A per-token input that a boundary rule (or estimator) reads, besides rewards and values.

    kind: "float", "int" or "bool". column: its name in the trajectory standard.
    """

    name: str
    kind: str
    help: str
    column: str


@dataclass(frozen=True)
class Rule:
    """An sae boundary rule: when a valid token starts a segment.

    option: the option that parametrises the rule; setting it selects the rule (None: "given").
    data: the per-token data it reads (None: "fixed" reads only the mask).
    """

    name: str
    help: str
    option: str | None
    data: str | None


@dataclass(frozen=True)
class Estimator:
    """An estimator: its lambda_t (see sae_core.schedules) and the options it takes."""

    name: str
    help: str
    options: tuple[str, ...] = ()
    segmental: bool = False


# ----------------------------------------------------------------------------------------------
# the data

PAPER_THRESHOLD = 0.2  # Gong et al. 2026: a token with behaviour probability below 0.2 starts a segment
PAPER_LAM = 0.95  # ... and lambda 0.95 at segment boundaries
VAPO_ALPHA = 0.05  # VAPO (arXiv 2504.05118): lambda = 1 - 1 / (alpha * L)

MASK_MODES = ("skip", "zero")
BACKENDS = ("auto", "reference", "numba", "torch", "triton")

# Arguments of every estimator.
COMMON = {
    "gamma": Option("gamma", "float", "discount", default=1.0, low=0.0, high=1.0),
    "mask_mode": Option("mask_mode", "choice", "skip (veRL: masked tokens transparent) or zero (OpenRLHF: "
                        "masked tokens are r = V = 0 steps)", default="skip", choices=MASK_MODES),
    "critic_lam": Option("critic_lam", "float", "lambda of decoupled critic targets (default: R = A + V)",
                         low=0.0, high=1.0),
}

OPTIONS = {o.name: o for o in (
    Option("lam", "float", "GAE lambda; for sae, the lambda at segment boundaries", default=PAPER_LAM,
           low=0.0, high=1.0),
    Option("alpha", "float", "vapo: lambda = 1 - 1 / (alpha * L), L = valid tokens in the row",
           default=VAPO_ALPHA, low=0.0, low_open=True),
    Option("boundary", "rule", "sae's boundary rule (default logprob, or the rule whose option is set)"),
    Option("threshold", "float", "rule logprob: a token whose behaviour probability is below this starts "
           "a segment", default=PAPER_THRESHOLD, low=0.0, high=1.0, low_open=True),
    Option("segment_length", "int", "rule fixed: every M-th valid token starts a segment", low=1, high=INT64_MAX),
    Option("delimiter_ids", "int_list", "rule delimiter: token ids after which a segment starts"),
    Option("quantile", "float", "rule quantile: tokens with log-prob below the row's q-quantile start "
           "segments", low=0.0, high=1.0),
    Option("entropy_threshold", "float", "rule entropy: tokens with entropy above this start segments"),
)}

DATA = {d.name: d for d in (
    Data("logprobs", "float", "the log-probability of each sampled token under the behaviour policy",
         "logprobs"),
    Data("response_ids", "int", "the sampled token ids", "response_ids"),
    Data("entropy", "float", "the policy's entropy at each token", "entropy"),
    Data("given_boundaries", "bool", "the caller's boundaries, True where a token starts a segment",
         "boundaries"),
)}

RULES = {r.name: r for r in (
    Rule("logprob", "logprobs[t] < log(threshold)", "threshold", "logprobs"),
    Rule("fixed", "the k-th valid token of its row, k % segment_length == 0", "segment_length", None),
    Rule("delimiter", "the valid token before it is one of delimiter_ids", "delimiter_ids", "response_ids"),
    Rule("quantile", "logprobs[t] below the row's q-quantile (numpy's linear method)", "quantile", "logprobs"),
    Rule("entropy", "entropy[t] > entropy_threshold", "entropy_threshold", "entropy"),
    Rule("given", "the caller says so (given_boundaries)", None, "given_boundaries"),
)}
DEFAULT_RULE = "logprob"

ESTIMATORS = {e.name: e for e in (
    Estimator("gae", "lambda_t = lam", ("lam",)),
    Estimator("mc", "lambda_t = 1"),
    Estimator("sae", "lambda_t = lam if token next(t) starts a segment, else 1",
              ("lam", "boundary", *(r.option for r in RULES.values() if r.option)), segmental=True),
    Estimator("vapo", "lambda_t = clip(1 - 1 / (alpha * L), 0, 1)", ("alpha",)),
)}


# ----------------------------------------------------------------------------------------------
# checks shared by every entry point


def scalar(name: str, x: Any) -> float:
    """A finite real number from a Python number, a numpy scalar or a one-element array/tensor."""
    if hasattr(x, "numel") or isinstance(x, np.ndarray):
        size = x.numel() if hasattr(x, "numel") else x.size
        if size != 1:
            raise ValueError(f"{name} must be a scalar; got shape {tuple(x.shape)}")
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise ValueError(f"{name} must be a real number; got {x!r}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite; got {x}")
    return x


def token_ids(name: str, ids: Any) -> tuple[int, ...]:
    """A non-empty, sorted tuple of distinct int64 token ids from an int, a sequence or an array."""
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    items = np.asarray(ids, dtype=object).ravel().tolist() if isinstance(ids, np.ndarray) else (
        [ids] if isinstance(ids, numbers.Integral) else list(ids) if isinstance(ids, (list, tuple)) else None)
    if not items or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in items):
        raise ValueError(f"{name} must be a non-empty list of integer token ids; got {ids!r}")
    if not all(-INT64_MAX - 1 <= i <= INT64_MAX for i in items):
        raise ValueError(f"{name} must be int64 token ids; got {ids!r}")
    return tuple(sorted({int(i) for i in items}))


def check_estimator(estimator: str) -> Estimator:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {tuple(ESTIMATORS)}; got {estimator!r}")
    return ESTIMATORS[estimator]


def check_options(estimator: str, options: Mapping[str, Any]) -> None:
    """TypeError for an option `estimator` does not take (the same message everywhere)."""
    allowed = check_estimator(estimator).options
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"takes only {', '.join(allowed)}" if allowed else "takes no options"
        raise TypeError(f"estimator {estimator!r} {takes}; got unexpected option(s) {', '.join(unknown)}")


def boundary_rule(estimator: str, options: Mapping[str, Any]) -> str | None:
    """The boundary rule `estimator` with `options` applies: None for estimators without segments.

    For sae: `boundary` when given, else the rule whose option is set (threshold: logprob,
    segment_length: fixed, delimiter_ids: delimiter, quantile: quantile, entropy_threshold:
    entropy), else logprob. Raises ValueError when options select different rules, `boundary`
    names an unknown rule, or the rule's option has no default and is missing.
    """
    if not check_estimator(estimator).segmental:
        return None
    selected = [r.name for r in RULES.values() if r.option and options.get(r.option) is not None]
    rule = options.get("boundary")
    if rule is None:
        if len(selected) > 1:
            opts = ", ".join(RULES[r].option for r in selected)
            raise ValueError(f"options {opts} select different boundary rules; pass one, or boundary=...")
        return selected[0] if selected else DEFAULT_RULE
    if rule not in RULES:
        raise ValueError(f"boundary must be one of {tuple(RULES)}; got {rule!r}")
    option = RULES[rule].option
    if option is not None and options.get(option) is None and OPTIONS[option].default is None:
        raise ValueError(f"boundary={rule!r} needs the option {option}=...")
    others = [RULES[r].option for r in selected if r != rule]
    if others:
        raise ValueError(f"option(s) {', '.join(others)} do not apply to boundary={rule!r}")
    return rule


def make_spec(estimator: str, *, gamma: Any = 1.0, mask_mode: str = "skip", critic_lam: Any = None,
              **options: Any) -> EstimatorSpec:
    """Check an estimator's arguments and options against the registry; the validated spec.

    Options the estimator does not take raise TypeError; values out of range, an unknown
    estimator, mask mode or rule, and options that select different rules raise ValueError naming
    the argument. Defaults (the paper's for sae) fill what is not given.
    """
    check_estimator(estimator)
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {MASK_MODES}; got {mask_mode!r}")
    options = {k: v for k, v in options.items() if v is not None}
    check_options(estimator, options)
    fields: dict[str, Any] = {
        "gamma": COMMON["gamma"].check(gamma),
        "critic_lam": None if critic_lam is None else COMMON["critic_lam"].check(critic_lam),
    }
    rule = boundary_rule(estimator, options)
    applicable = [o for o in ESTIMATORS[estimator].options if o != "boundary"]
    if rule is not None:  # only the chosen rule's option applies
        rule_opts = rule_options()
        applicable = [o for o in applicable if o not in rule_opts or o == RULES[rule].option]
    for name in applicable:
        value = options.get(name, OPTIONS[name].default)
        if value is not None:
            fields[name] = OPTIONS[name].check(value)
    own = {k: fields.pop(k) for k in list(fields) if k in EstimatorSpec.__dataclass_fields__}
    return EstimatorSpec(estimator=estimator, mask_mode=mask_mode, boundary=rule,
                         lam=own.pop("lam", PAPER_LAM), extra=tuple(sorted(fields.items())), **own)


def needed_data(spec_or_estimator: EstimatorSpec | str, boundary: str | None = None) -> tuple[str, ...]:
    """The per-token data names (keys of DATA) an estimator with its rule reads."""
    if isinstance(spec_or_estimator, EstimatorSpec):
        boundary = spec_or_estimator.boundary
    elif check_estimator(spec_or_estimator).segmental:
        boundary = boundary or DEFAULT_RULE
    else:
        boundary = None
    data = RULES[boundary].data if boundary is not None else None
    return (data,) if data else ()


def score_data(spec: EstimatorSpec) -> str | None:
    """The float per-token data that the spec's rule compares with a cut ('logprobs' for logprob
    and quantile, 'entropy' for entropy), or None."""
    data = RULES[spec.boundary].data if spec.boundary is not None else None
    return data if data is not None and DATA[data].kind == "float" else None


def recorded_params(spec: EstimatorSpec) -> dict[str, Any]:
    """The parameters that determine the outputs, for logs and file metadata: estimator, gamma,
    mask_mode, critic_lam, then the options the estimator (and its rule) read, e.g.
    {"estimator": "sae", "gamma": 1.0, "mask_mode": "skip", "critic_lam": None, "lam": 0.95,
    "boundary": "logprob", "threshold": 0.2}."""
    out: dict[str, Any] = {"estimator": spec.estimator, "gamma": spec.gamma, "mask_mode": spec.mask_mode,
                           "critic_lam": spec.critic_lam}
    rule_opts = rule_options()
    for name in ESTIMATORS[spec.estimator].options:
        if name == "boundary" or (spec.boundary is not None and name in rule_opts):
            continue
        out[name] = spec.option(name)
    if spec.boundary is not None:
        out["boundary"] = spec.boundary
        option = RULES[spec.boundary].option
        if option is not None:
            value = spec.option(option)
            out[option] = list(value) if isinstance(value, tuple) else value
    return out


def rule_options() -> frozenset[str]:
    """The options that select (and parametrise) a boundary rule, read from RULES when called."""
    return frozenset(r.option for r in RULES.values() if r.option)


def estimator_params(estimator: str, **kwargs: Any) -> dict[str, Any]:
    """The validated parameters of an estimator, as recorded in files and logs (`recorded_params`).

    Takes `compute_advantages`' scalar keyword arguments (gamma, mask_mode, critic_lam and the
    estimator's options) and raises as it does; per-token data is not needed. For checking
    options before any data exists: a command line, a trainer's config, a file's metadata.
    """
    return recorded_params(make_spec(estimator, **kwargs))


def run_options(estimator: str, common: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
                ) -> dict[str, Any]:
    """The options of one run of a job: of the job-wide `common` options, those `estimator` takes
    (None values dropped), then the run's own `overrides`. A run whose overrides choose a boundary
    rule (boundary= or a rule's option) drops the job-wide rule options, so that
    `--threshold 0.1 --estimator sae:segment_length=8` is the fixed rule, not a conflict."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    takes = set(COMMON) | set(check_estimator(estimator).options)
    out = {k: v for k, v in common.items() if v is not None and k in takes}
    if ESTIMATORS[estimator].segmental and any(k in rule_options() or k == "boundary" for k in overrides):
        for key in (*rule_options(), "boundary"):
            out.pop(key, None)
    out.update(overrides)
    return out


def parse_run(text: str) -> tuple[str, dict[str, Any]]:
    """An estimator run from a command line: "NAME" or "NAME:key=value,key=value".

    Values are parsed by their option's type (JSON where it parses: "sae:threshold=0.1",
    "sae:delimiter_ids=[13,14]"); a comma separates options only where a new key= follows, so lists
    stay whole. Returns (name, options). Raises ValueError for an unknown estimator or option, or a
    malformed item, naming it.
    """
    name, _, rest = text.partition(":")
    name = name.strip()
    if name not in ESTIMATORS:
        raise ValueError(f"the estimator must be one of {', '.join(ESTIMATORS)}; got {name!r}")
    options: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", rest))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"expected NAME:key=value,...; got {item!r}")
        if key not in COMMON:
            check_options(name, {key: value})  # TypeError for an option the estimator does not take
        options[key] = (COMMON.get(key) or OPTIONS[key]).parse(value.strip())
    return name, options


__all__ = [
    "BACKENDS", "COMMON", "DATA", "DEFAULT_RULE", "ESTIMATORS", "Data", "Estimator", "MASK_MODES", "OPTIONS",
    "Option", "PAPER_LAM", "PAPER_THRESHOLD", "RULES", "Rule", "VAPO_ALPHA", "boundary_rule", "check_options",
    "check_estimator", "estimator_params", "make_spec", "needed_data", "parse_run", "recorded_params",
    "rule_options", "run_options", "scalar", "score_data", "token_ids",
]
