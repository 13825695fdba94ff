"""What an installed sae-rl is: the wheel and sdist (package data, LICENSE, metadata, extras), the
trajectory standard's documents reachable from Python, its JSON Schemas (real 2020-12 schemas that
real files' metadata and rows satisfy), and one line naming the extra for a missing optional
dependency. The wheel is built from a copy of the tree (`python -m build --no-isolation`), and
installed with `--no-deps` into a fresh venv that sees numpy, numba, pyarrow, tqdm and rich (with
its markdown-it-py, mdurl and pygments) only."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import warnings
import zipfile
from email.parser import Parser
from pathlib import Path

import jsonschema
import pyarrow as pa
import pytest

import sae_core
from sae_core import registry
from sae_core import trajectory as tj
from sae_core.extras import MissingExtra, available, require

ROOT = Path(__file__).resolve().parent.parent
CORE_DEPS = ("numpy", "numpy.libs", "numba", "llvmlite", "pyarrow", "tqdm", "rich", "markdown_it", "mdurl", "pygments")
EXTRAS = {"torch", "verl", "openrlhf", "examples", "ray", "report", "test"}
DOCS = {"SPEC.md", f"trajectory-{tj.SPEC_VERSION}.schema.json", f"metadata-{tj.SPEC_VERSION}.schema.json",
        "conformance/README.md"}

# Run before the code under test in a child process: these imports fail as if not installed.
BLOCK = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _Block())
"""


def run_blocked(blocked: set[str], code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -c code args` with `blocked` top-level packages made missing."""
    return subprocess.run([sys.executable, "-c", BLOCK.format(blocked=set(blocked)) + code, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


# ----------------------------------------------------------------------------------------------
# the built distributions


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """The wheel and the sdist, built from a copy of what the sdist needs (the tree is shared)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
    shutil.copytree(ROOT / "sae_core", src / "sae_core", ignore=ignore)
    shutil.copytree(ROOT / "adapters", src / "adapters", ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "absent from the `packages` configuration" not in proc.stdout + proc.stderr
    (wheel,) = out.glob("sae_rl-*.whl")
    (sdist,) = out.glob("sae_rl-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def shipped_docs() -> set[str]:
    """The documents of the clone's sae_core/schemas, relative to it."""
    root = ROOT / "sae_core" / "schemas"
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_the_wheel_holds_the_packages_the_standard_and_the_license(dists):
    names = set(zipfile.ZipFile(dists["wheel"]).namelist())
    for package in ("sae_core", "sae_verl", "sae_openrlhf"):
        assert f"{package}/__init__.py" in names
    modules = {f"{package}/{path.relative_to(root).as_posix()}"  # a subpackage missing from `packages` too
               for package, root in (("sae_core", ROOT / "sae_core"), ("sae_verl", ROOT / "adapters" / "sae_verl"),
                                     ("sae_openrlhf", ROOT / "adapters" / "sae_openrlhf"))
               for path in root.rglob("*.py")}
    assert not modules - names, f"modules missing from the wheel: {sorted(modules - names)}"
    docs = {n.removeprefix("sae_core/schemas/") for n in names if n.startswith("sae_core/schemas/")}
    assert DOCS <= docs
    assert len([d for d in docs if d.startswith("conformance/") and d.endswith(".parquet")]) >= 16
    assert docs == shipped_docs()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "schemas/", "benchmarks/", "examples/")) for n in names)


def test_the_wheel_metadata(dists):
    with zipfile.ZipFile(dists["wheel"]) as whl:
        (meta_name,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(whl.read(meta_name).decode())
        (ep_name,) = [n for n in whl.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry_points = whl.read(ep_name).decode()
        license_text = whl.read(next(n for n in whl.namelist() if n.endswith("licenses/LICENSE"))).decode()
    assert meta["Name"] == "sae-rl" and meta["Version"] == sae_core.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    classifiers = meta.get_all("Classifier")
    assert "Topic :: Scientific/Engineering :: Artificial Intelligence" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert EXTRAS <= set(meta.get_all("Provides-Extra"))
    requires = meta.get_all("Requires-Dist")
    core = {re.split(r"[\s;<>=!\[]", r)[0] for r in requires if "extra ==" not in r}
    assert core == {"numpy", "numba", "pyarrow", "tqdm", "rich"}
    assert any(r.startswith("matplotlib") and 'extra == "report"' in r for r in requires)
    assert any(r.startswith("ray[data]") and 'extra == "ray"' in r for r in requires)
    assert any(r.startswith("openrlhf") and 'extra == "openrlhf"' in r for r in requires)
    assert "sae = sae_core.tools.cli:main" in entry_points
    assert "sae-openrlhf-train-ppo = sae_openrlhf.train_ppo_ray:main" in entry_points


def test_the_sdist_holds_the_standard_and_the_license(dists):
    with tarfile.open(dists["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"LICENSE", "pyproject.toml", "README.md", "PKG-INFO", "sae_core/__init__.py",
            "adapters/sae_verl/__init__.py", "adapters/sae_openrlhf/__init__.py"} <= names
    assert {f"sae_core/schemas/{d}" for d in shipped_docs()} <= names


@pytest.fixture(scope="module")
def clean_venv(dists, tmp_path_factory) -> Path:
    """A venv without torch, matplotlib, ray or transformers, with the wheel installed (no deps) and
    the core dependencies visible through a .pth file; returns its bin directory."""
    import numpy

    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    deps = venv / "core-deps"
    deps.mkdir()
    site = Path(numpy.__file__).resolve().parent.parent
    for entry in site.iterdir():
        top = entry.name.split("-")[0] if entry.name.endswith(".dist-info") else entry.name
        if top in CORE_DEPS:
            (deps / entry.name).symlink_to(entry)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run([venv / "bin" / "python", "-c", where], capture_output=True, text=True,
                             check=True).stdout.strip()
    Path(purelib, "core-deps.pth").write_text(f"{deps}\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                           "--quiet", "--no-deps", "--no-index", str(dists["wheel"])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return venv / "bin"


def test_the_installed_wheel_works_without_torch_or_matplotlib(clean_venv, tmp_path):
    py = clean_venv / "python"
    code = ("import importlib.util, sys, sae_core, sae_core.trajectory, sae_core.tools.cli\n"
            "absent = [m for m in ('torch', 'matplotlib', 'ray', 'transformers') if importlib.util.find_spec(m)]\n"
            "assert not absent, absent\n"
            "print(sae_core.__version__, sae_core.spec_path(), sae_core.spec_document().splitlines()[0], sep='\\n')")
    proc = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    version, where, title = proc.stdout.splitlines()
    assert version == sae_core.__version__
    assert Path(where).is_dir() and ROOT not in Path(where).parents  # the installed copy, not the clone's
    assert title.startswith("# The sae-rl trajectory standard")
    vector = Path(where) / "conformance" / "sae_p0.2_skip.parquet"
    proc = subprocess.run([clean_venv / "sae", "validate", str(vector)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([clean_venv / "sae-openrlhf-train-ppo", "--help"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert (proc.returncode, proc.stderr) == (2, 'sae-openrlhf-train-ppo needs openrlhf: pip install '
                                                 '"openrlhf==0.11.2" (sae-rl\'s "openrlhf" extra)\n')


def test_the_installed_sae_spec_and_version(clean_venv, tmp_path):
    def sae(*argv: str) -> str:
        proc = subprocess.run([clean_venv / "sae", *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    where = Path(sae("spec", "--path").strip())
    assert (where / "SPEC.md").is_file() and ROOT not in where.parents
    assert sae("spec").startswith("# The sae-rl trajectory standard")
    assert sae("spec", "SPEC.md") == sae("spec")
    vector = "conformance/gae_skip.parquet"
    assert Path(sae("spec", "--path", vector).strip()) == where / vector
    assert "SPEC.md" in sae("spec", "--list").split()
    assert json.loads(sae("spec", f"metadata-{tj.SPEC_VERSION}.schema.json")) == tj.metadata_schema()
    assert sae_core.__version__ in sae("--version")


def test_the_installed_sae_report_names_the_extra(clean_venv, tmp_path):
    vector = ROOT / "sae_core" / "schemas" / "conformance" / "sae_p0.2_skip.parquet"
    proc = subprocess.run([clean_venv / "sae", "report", str(vector), "--out", str(tmp_path / "r.html")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].endswith('needs matplotlib: pip install "matplotlib>=3.7" (sae-rl\'s "report" extra)')
    assert not (tmp_path / "r.html").exists()


# ----------------------------------------------------------------------------------------------
# the documents from Python


def test_spec_path_and_names():
    root = sae_core.spec_path()
    assert root == ROOT / "sae_core" / "schemas" and root.is_dir()
    names = sae_core.spec_names()
    assert names[0] == "SPEC.md" and DOCS <= set(names) and set(names) == shipped_docs()
    assert sae_core.spec_path("conformance/sae_p0.2_skip.parquet") == root / "conformance" / "sae_p0.2_skip.parquet"
    assert sae_core.spec_document().startswith("# The sae-rl trajectory standard, version 1.0")
    assert sae_core.spec_json(f"metadata-{tj.SPEC_VERSION}.schema.json") == tj.metadata_schema()
    with pytest.raises(FileNotFoundError, match="SPEC.md"):
        sae_core.spec_path("SPEC-2.0.md")
    for bad in ("../pyproject.toml", "/etc/passwd", ""):
        with pytest.raises(ValueError):
            sae_core.spec_path(bad)
    with pytest.raises(ValueError, match="binary"):
        sae_core.spec_document("conformance/gae_skip.parquet")


# ----------------------------------------------------------------------------------------------
# the JSON Schemas


@pytest.fixture(scope="module")
def validators():
    v = jsonschema.Draft202012Validator
    return {"row": v(tj.row_schema()), "metadata": v(tj.metadata_schema())}


def test_the_json_schemas_are_2020_12_schemas():
    for name in (f"trajectory-{tj.SPEC_VERSION}.schema.json", f"metadata-{tj.SPEC_VERSION}.schema.json"):
        doc = sae_core.spec_json(name)
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(doc)
    broken = {**tj.metadata_schema(), "required": "spec_version"}  # the check itself can fail
    with pytest.raises(jsonschema.SchemaError):
        jsonschema.Draft202012Validator.check_schema(broken)


def metadata_of(table) -> dict:
    return json.loads(table.schema.metadata[tj.METADATA_KEY.encode()])


def test_real_files_metadata_and_rows_satisfy_the_schemas(validators):
    files = sorted((ROOT / "sae_core" / "schemas" / "conformance").glob("*.parquet"))
    assert files
    for path in files:
        table = tj.read_table(path)
        validators["metadata"].validate(metadata_of(table))
        for row in table.to_pylist():
            validators["row"].validate(row)


def every_recorded_params() -> list[dict]:
    """recorded_params of every estimator, and of sae with each rule that has an option."""
    out = [registry.estimator_params(name) for name, e in registry.ESTIMATORS.items() if not e.segmental]
    examples = {"float": 0.5, "int": 8, "int_list": [13, 14]}
    for name, e in registry.ESTIMATORS.items():
        if e.segmental:
            for rule in registry.RULES.values():
                if rule.option is not None:
                    value = examples[registry.OPTIONS[rule.option].kind]
                    out.append(registry.estimator_params(name, **{rule.option: value}))
    out.append(registry.estimator_params("gae", mask_mode="zero", critic_lam=1.0, gamma=0.99))
    return out


def test_recorded_parameters_satisfy_the_metadata_schema(validators):
    params = every_recorded_params()
    assert {p.get("boundary") for p in params} >= {r for r, v in registry.RULES.items() if v.option}
    for p in params:
        doc = metadata_of(tj.schema(["trajectory_id", "response_ids"], estimators={"advantages": p}).empty_table())
        validators["metadata"].validate(doc)


@pytest.mark.parametrize("change, valid", [
    ({"threshold": 0.0}, False), ({"threshold": 1.5}, False), ({"lam": -0.1}, False), ({"alpha": 0.0}, False),
    ({"segment_length": 0}, False), ({"delimiter_ids": []}, False), ({"mask_mode": "both"}, False),
    ({"boundary": "newline"}, False), ({"estimator": "ppo2"}, False), ({"threshold": 1.0}, True),
    ({"gamma": 0.0}, True), ({"critic_lam": None}, True), ({"some_later_key": 3}, True),
])
def test_the_metadata_schema_judges_as_the_reader_does(validators, change, valid):
    """Out-of-range numbers fail the schema and are refused by read_info (Info.invalid); names
    that version 1.0 does not define fail the 1.0 schema, but pass in a later minor version."""
    params = {**registry.estimator_params("sae"), **change}
    doc = {"spec_version": tj.SPEC_VERSION, "producer": "test", "estimators": {"advantages": params}}
    assert validators["metadata"].is_valid(doc) is valid
    numeric = not any(isinstance(v, str) for v in change.values())
    if numeric and "some_later_key" not in change:
        meta = {tj.METADATA_KEY.encode(): json.dumps(doc).encode()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = tj.read_info(pa.schema([], metadata=meta))
        assert ("advantages" in info.invalid) is (not valid)
    if not numeric:  # a name only a later 1.x may define
        assert validators["metadata"].is_valid({**doc, "spec_version": "1.1"})


def test_the_metadata_schema_refuses_what_no_1x_file_holds(validators):
    ok = {"spec_version": "1.0", "estimators": {}}
    assert validators["metadata"].is_valid(ok)
    for bad in ({"estimators": {}}, {**ok, "spec_version": "2.0"}, {**ok, "spec_version": 1.0},
                {**ok, "estimators": {"advantages": {"gamma": 1.0}}}, {**ok, "estimators": []}):
        assert not validators["metadata"].is_valid(bad), bad


def test_the_row_schema_refuses_bad_rows(validators):
    good = tj.read_table(ROOT / "sae_core" / "schemas" / "conformance" / "sae_p0.2_skip.parquet").to_pylist()[2]
    assert validators["row"].is_valid(good)
    assert validators["row"].is_valid({**good, "advantages_gae": [0.0] * len(good["response_ids"]), "note": "x"})
    for bad in ({k: v for k, v in good.items() if k != "response_ids"}, {**good, "logprobs": ["a"]},
                {**good, "response_mask": [2]}, {**good, "values": None}, {**good, "trajectory_id": None},
                {**good, "boundaries_sae": [0.5]}, {**good, "step": 1.5}):
        assert not validators["row"].is_valid(bad)
    annotations = tj.row_schema()["properties"]
    assert {annotations[c.name]["x-sae-level"] for c in tj.COLUMNS} == {"row", "token"}
    assert annotations["logprobs"]["x-sae-arrow-type"] == "large_list<float32>"


# ----------------------------------------------------------------------------------------------
# a missing optional dependency: one line naming the extra


def test_require_names_the_extra():
    with pytest.raises(MissingExtra) as caught:
        require("sae_rl_no_such_module.sub", extra="report", needed_by="sae report")
    assert str(caught.value) == ('sae report needs sae_rl_no_such_module: pip install "matplotlib>=3.7" '
                                 '(sae-rl\'s "report" extra)')
    assert isinstance(caught.value, ImportError) and caught.value.extra == "report"
    assert require("json", extra="x", needed_by="y") is json


def test_import_sae_core_needs_neither_torch_nor_matplotlib():
    code = ("import sys, sae_core, sae_core.trajectory, sae_core.tools.cli, sae_core.tools.report, sae_core.lab\n"
            "import numpy as np\n"
            "adv = sae_core.compute_advantages(np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32),"
            " np.ones((1, 3), np.float32), estimator='gae')\n"
            "print(sorted(m for m in ('torch', 'matplotlib', 'ray') if m in sys.modules))")
    proc = run_blocked({"torch", "matplotlib", "ray", "transformers", "triton"}, code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_report_and_demo_without_matplotlib(tmp_path):
    vector = ROOT / "sae_core" / "schemas" / "conformance" / "sae_p0.2_skip.parquet"
    code = ("import sys\nfrom sae_core.extras import MissingExtra\nfrom sae_core.tools.report import write_report\n"
            "from sae_core.lab.demo import run\n"
            "for call in (lambda: write_report(sys.argv[1], sys.argv[2]), lambda: run(sys.argv[3])):\n"
            "    try:\n        call()\n    except MissingExtra as exc:\n        print(exc)\n")
    proc = run_blocked({"matplotlib"}, code, str(vector), str(tmp_path / "r.html"), str(tmp_path / "demo"))
    assert proc.returncode == 0, proc.stderr
    hint = 'pip install "matplotlib>=3.7" (sae-rl\'s "report" extra)'
    assert proc.stdout.splitlines() == [f"sae report needs matplotlib: {hint}",
                                        f"sae demo (its report and plot; --no-report skips them) needs matplotlib: {hint}"]
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "demo").exists()


def test_the_ray_engine_without_ray(tmp_path):
    vector = ROOT / "sae_core" / "schemas" / "conformance" / "sae_p0.2_skip.parquet"
    code = ("import sys\nfrom sae_core.extras import MissingExtra\n"
            "from sae_core.tools.recompute import plan_runs, recompute\n"
            "try:\n    recompute(sys.argv[1], sys.argv[2], plan_runs(['gae']), engine='ray', progress=False)\n"
            "except MissingExtra as exc:\n    print(exc)\n")
    proc = run_blocked({"ray"}, code, str(vector), str(tmp_path / "out.parquet"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ('the Ray engine (sae recompute --engine ray) needs ray: pip install "ray[data]>=2.9" '
                           '(sae-rl\'s "ray" extra)\n')


@pytest.mark.parametrize("missing", ["openrlhf", "ray"])
def test_the_openrlhf_wrapper_without_openrlhf(missing):
    code = "import runpy\nrunpy.run_module('sae_openrlhf.train_ppo_ray', run_name='__main__')"
    proc = run_blocked({missing}, code, "--help")
    named = missing if available("openrlhf") else "openrlhf"  # OpenRLHF is checked first
    assert proc.returncode == 2
    assert proc.stderr == (f'sae-openrlhf-train-ppo needs {named}: pip install "openrlhf==0.11.2" '
                           '(sae-rl\'s "openrlhf" extra)\n')
    assert proc.stdout == ""


@pytest.mark.parametrize("argv, extra", [(["report", "{vector}", "--out", "{tmp}/r.html"], "report"),
                                         (["recompute", "{vector}", "{tmp}/o.parquet", "--engine", "ray"], "ray")])
def test_the_cli_says_which_extra_to_install(tmp_path, argv, extra):
    vector = ROOT / "sae_core" / "schemas" / "conformance" / "sae_p0.2_skip.parquet"
    argv = [a.format(vector=vector, tmp=tmp_path) for a in argv]
    code = "import sys\nfrom sae_core.tools.cli import main\nsys.exit(main(sys.argv[1:]))"
    proc = run_blocked({"matplotlib", "ray"}, code, *argv)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    requirement = "matplotlib>=3.7" if extra == "report" else "ray[data]>=2.9"
    assert len(lines) == 1 and lines[0].endswith(f'needs {"matplotlib" if extra == "report" else "ray"}: '
                                                 f'pip install "{requirement}" (sae-rl\'s "{extra}" extra)'), \
        proc.stderr
