"""A boundary rule added to the registry, with a new option, reaches the command line and the
adapters' settings with no edit to them: `sae recompute`'s flags and `NAME:k=v` overrides and the
veRL adapter's `algorithm.sae` check here, OpenRLHF's flags in
tests_openrlhf/test_registry_extension.py (its own environment). The backends would still need the
rule's boundary flags (sae_core.schedules, then each kernel), which is not tested here."""

import dataclasses

import pytest

from sae_core import registry
from sae_core.integration import translate
from sae_core.tools.cli import build_parser
from sae_core.tools.recompute import plan_runs
from sae_verl.estimator import known_options, options

NEW_OPTION = "every_other_phase"


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


def test_without_the_rule_its_option_is_unknown():
    assert NEW_OPTION not in known_options()
    with pytest.raises(ValueError, match=f"algorithm.sae.{NEW_OPTION}"):
        options({"sae": {NEW_OPTION: 1}})


def test_verl_accepts_the_new_option(every_other):
    assert NEW_OPTION in known_options()
    assert options({"sae": {NEW_OPTION: 1, "lam": 0.9}}) == {NEW_OPTION: 1, "lam": 0.9}
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"sae": {NEW_OPTION: 0, "boundary": "every_other"}})
    assert options(cfg) == {NEW_OPTION: 0, "boundary": "every_other"}
    # and the adapter's translation passes it on, selecting the new rule, which reads no per-token data
    kwargs = translate.estimator_kwargs("sae", options(cfg), adapter=("logprobs",), gamma=1.0)
    assert kwargs == {NEW_OPTION: 0, "boundary": "every_other", "gamma": 1.0}
    assert registry.boundary_rule("sae", {NEW_OPTION: 1}) == "every_other"
    assert translate.needed_data("sae", {NEW_OPTION: 1}) == ()
    assert translate.estimator_kwargs("vapo", {NEW_OPTION: 1, "alpha": 0.1}) == {"alpha": 0.1}  # sae's only


def test_the_command_line_accepts_the_new_option(every_other):
    flag = "--" + NEW_OPTION.replace("_", "-")
    args = build_parser().parse_args(["recompute", "in", "out", flag, "1", "--boundary", "every_other",
                                      "--estimator", f"sae:{NEW_OPTION}=1"])
    assert getattr(args, NEW_OPTION) == 1 and args.boundary == "every_other"
    assert registry.parse_run(f"sae:{NEW_OPTION}=1") == ("sae", {NEW_OPTION: 1})
    # a run that sets the new option chooses the new rule; the job-wide threshold gives way
    (run,) = plan_runs([f"sae:{NEW_OPTION}=0"], {"threshold": 0.1, "gamma": 0.9})
    assert run.params == {NEW_OPTION: 0, "gamma": 0.9}
    assert run.recorded() == {"estimator": "sae", "gamma": 0.9, "mask_mode": "skip", "critic_lam": None,
                              "lam": 0.95, "boundary": "every_other", NEW_OPTION: 0}
    with pytest.raises(SystemExit):  # the option's own range check: 0 or 1
        build_parser().parse_args(["recompute", "in", "out", flag, "2"])


def test_without_the_rule_the_command_line_refuses_its_option():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["recompute", "in", "out", "--" + NEW_OPTION.replace("_", "-"), "1"])
    with pytest.raises(TypeError, match=NEW_OPTION):
        registry.parse_run(f"sae:{NEW_OPTION}=1")
