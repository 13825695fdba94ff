"""sae_core.integration: a patch runs when its module is imported, or at once if it already is
(hooks); what both adapters share to translate settings and wrap functions (translate)."""

import importlib
import sys

import numpy as np
import pytest

from sae_core import compute_advantages, estimator_params
from sae_core.integration.hooks import on_import
from sae_core.integration.translate import (
    ORIGINAL,
    choose_logprobs,
    data_names,
    estimator_kwargs,
    needed_data,
    option_names,
    wrap_attribute,
    wrap_once,
)


def write_module(tmp_path, name, body="VALUE = 1\n"):
    (tmp_path / f"{name}.py").write_text(body)


def test_patch_on_import_and_when_already_imported(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "hooked_later")
    write_module(tmp_path, "hooked_before")
    importlib.invalidate_caches()
    import hooked_before  # noqa: F401

    calls = []

    def patch_later(module):
        calls.append(("later", module.VALUE))
        module.VALUE = 2

    def patch_before(module):
        calls.append(("before", module.VALUE))

    on_import({"hooked_later": patch_later, "hooked_before": patch_before})
    assert calls == [("before", 1)]  # already imported: patched at once
    import hooked_later

    assert calls == [("before", 1), ("later", 1)] and hooked_later.VALUE == 2
    assert hooked_later.__spec__.origin.endswith("hooked_later.py")  # a normal module otherwise
    on_import({"hooked_later": patch_later})  # again: replaces, does not add
    del sys.modules["hooked_later"]
    import hooked_later  # noqa: F811

    assert calls[-1] == ("later", 1) and len(calls) == 4  # one patch per import, not two
    for name in ("hooked_later", "hooked_before"):
        sys.modules.pop(name, None)


def test_a_module_that_fails_to_import_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "hooked_broken", "raise ImportError('no CUDA here')\n")
    importlib.invalidate_caches()
    calls = []
    on_import({"hooked_broken": calls.append})
    with pytest.raises(ImportError, match="no CUDA here"):
        import hooked_broken  # noqa: F401
    assert calls == []


def test_estimator_params_without_data():
    """What the adapters check before any data exists: estimator_params takes scalars only."""
    assert estimator_params("sae", threshold=0.1)["threshold"] == 0.1
    assert estimator_params("sae", delimiter_ids=[13])["boundary"] == "delimiter"
    with pytest.raises(ValueError, match="logprobs"):  # the computation itself needs the rule's data
        compute_advantages(np.zeros((1, 3)), np.zeros((1, 3)), None, estimator="sae", threshold=0.1)
    with pytest.raises(ValueError, match="threshold"):
        estimator_params("sae", threshold=2.0)


def test_options_come_from_the_registry():
    names = option_names(("sae", "vapo"), ("critic_lam",), ("logprobs",))
    assert names[:2] == ("lam", "boundary") and "entropy_threshold" in names and "alpha" in names
    assert names[-2:] == ("critic_lam", "logprobs") and len(set(names)) == len(names)
    with pytest.raises(ValueError, match="COMMON"):
        option_names(("sae",), ("threshold",))
    settings = {"threshold": 0.3, "alpha": 0.1, "critic_lam": None, "logprobs": "auto", "mask_mode": "zero"}
    # no defaults filled in (compute_advantages applies the registry's); another estimator's options dropped
    assert estimator_kwargs("sae", settings, adapter=("logprobs",), gamma=0.9) == {
        "threshold": 0.3, "mask_mode": "zero", "gamma": 0.9}
    assert estimator_kwargs("vapo", settings, adapter=("logprobs",)) == {"alpha": 0.1, "mask_mode": "zero"}
    with pytest.raises(TypeError, match="takes only alpha"):
        estimator_kwargs("vapo", settings, adapter=("logprobs",), strict=True)


def test_the_data_a_rule_reads():
    assert needed_data("sae", {}) == ("logprobs",) and needed_data("vapo", {"alpha": 0.1}) == ()
    assert needed_data("sae", {"segment_length": 4}) == ()
    assert needed_data("sae", {"delimiter_ids": [13]}) == ("response_ids",)
    names = data_names("sae", {"entropy_threshold": 1.0}, ("entropy",), framework="F", setting="s")
    assert names == ("entropy",)
    with pytest.raises(ValueError, match="s=given: .*given_boundaries.*which F cannot provide"):
        data_names("sae", {"boundary": "given"}, ("logprobs",), framework="F", setting="s")


def test_choose_logprobs():
    present = {"b": 2}
    assert choose_logprobs("auto", ("a", "b"), present.get, setting="x") == (("a", "b"), 2)
    assert choose_logprobs("a", ("a", "b"), present.get, setting="x") == (("a",), None)
    with pytest.raises(ValueError, match="x must be auto, a or b; got 'c'"):
        choose_logprobs("c", ("a", "b"), present.get, setting="x")


def test_wrap_once():
    def f(x):
        """f's doc"""
        return x

    def make(original):
        return lambda x: original(x) + 1

    g = wrap_once(f, make)
    assert g(1) == 2 and getattr(g, ORIGINAL) is f and g.__wrapped__ is f and g.__doc__ == "f's doc"
    assert wrap_once(g, make) is g

    class Base:
        def method(self):
            return 1

    class Child(Base):
        pass

    wrap_attribute(Child, "method", lambda original: lambda self: original(self) + 1)  # inherited: untouched
    wrap_attribute(Base, "method", lambda original: lambda self: original(self) + 1)
    wrap_attribute(Base, "method", lambda original: lambda self: original(self) + 1)
    assert Child().method() == 2 and "method" not in vars(Child)
