"""sae_core.import_hooks: a patch runs when its module is imported, or at once if it already is."""

import importlib
import sys

import pytest

from sae_core.estimators import estimator_params
from sae_core.import_hooks import on_import


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
    assert estimator_params("sae", threshold=0.1, require_data=False)["threshold"] == 0.1
    assert estimator_params("sae", delimiter_ids=[13], require_data=False)["boundary"] == "delimiter"
    with pytest.raises(ValueError, match="logprobs"):
        estimator_params("sae", threshold=0.1)  # with data required, the rule's data must be there
    with pytest.raises(ValueError, match="threshold"):
        estimator_params("sae", threshold=2.0, require_data=False)
