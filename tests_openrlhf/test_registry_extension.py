"""A boundary rule added to the registry, with a new option, gets its `--algo.advantage.sae.*` flag
with no edit to sae_openrlhf (the veRL side: tests/test_registry_extension.py)."""

import argparse
import dataclasses

import pytest

from sae_core import registry
from sae_openrlhf import train_ppo_ray

NEW_OPTION = "every_other_phase"
FLAG = f"--algo.advantage.sae.{NEW_OPTION}"


@pytest.fixture
def every_other(monkeypatch):
    """The rule "every_other" (every other valid token starts a segment, from the phase-th) and
    its option, added to the registry as a contributor would, for the length of one test."""
    option = registry.Option(NEW_OPTION, "int", "rule every_other: the valid-token index of the first "
                             "boundary (0 or 1)", low=0, high=1)
    monkeypatch.setitem(registry.OPTIONS, NEW_OPTION, option)
    rule = registry.Rule("every_other", "the k-th valid token, k % 2 == phase", NEW_OPTION, None)
    monkeypatch.setitem(registry.RULES, "every_other", rule)
    sae = registry.ESTIMATORS["sae"]  # a frozen dataclass: a copy that also takes the new option
    monkeypatch.setitem(registry.ESTIMATORS, "sae", dataclasses.replace(sae, options=(*sae.options, NEW_OPTION)))
    return option


def parser_with_our_flags():
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--algo.advantage.estimator")
    return parser, train_ppo_ray.add_flags(parser)


def test_without_the_rule_there_is_no_flag():
    parser, dests = parser_with_our_flags()
    assert f"algo.advantage.sae.{NEW_OPTION}" not in dests
    with pytest.raises(SystemExit):  # argparse: unrecognized arguments
        parser.parse_args(["--algo.advantage.estimator", "sae", FLAG, "1"])


def test_the_flags_parser_takes_the_new_option(every_other):
    parser, dests = parser_with_our_flags()
    assert f"algo.advantage.sae.{NEW_OPTION}" in dests
    ns = parser.parse_args(["--algo.advantage.estimator", "sae", FLAG, "1", "--algo.advantage.sae.boundary",
                            "every_other"])
    assert getattr(ns, f"algo.advantage.sae.{NEW_OPTION}") == 1
    assert getattr(ns, "algo.advantage.sae.boundary") == "every_other"  # the rule is a choice of --...boundary
    assert FLAG in parser.format_help() and "every_other" in parser.format_help()
    with pytest.raises(argparse.ArgumentError, match="must be an integer from 0"):  # the Option's own check
        parser.parse_args(["--algo.advantage.estimator", "sae", FLAG, "2"])
