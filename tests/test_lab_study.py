"""The study (`sae lab`) and `sae demo` run end to end through the CLI; docs/lab.md's tables are the
ones docs/lab-results.json regenerates."""

import json
from pathlib import Path

import pytest

from sae_core.lab import present, study
from sae_core.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent

TINY = {
    "settings": {"tiny": {"min_length": 40, "max_length": 60, "decision_rate": 0.1, "slip_rate": 0.05}},
    "critics": [{"name": "exact", "kind": "exact"}, {"name": "blind", "kind": "blind"},
                {"name": "learned mc n8", "kind": "learned", "params": {"target": "mc", "rollouts_per_prompt": 8}},
                {"name": "learned, unseen", "kind": "learned", "prompts": "unseen",
                 "params": {"target": "mc", "rollouts_per_prompt": 8}}],
    "estimators": "quick", "seeds": 3, "tasks": 3, "samples": 4, "batches": 2, "segment_rollouts": 4,
    "closed_loop": {"process": {"min_length": 30, "max_length": 40}, "estimators": ["mc", "gae 0.95", "sae p0.2"],
                    "seeds": 2, "tasks": 2, "loop": {"iterations": 5, "warmup_samples": 4}},
}


def test_config_round_trips_and_names_unknown_keys():
    config = study.StudyConfig.from_dict(TINY)
    assert study.StudyConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert study.StudyConfig.from_dict(study.StudyConfig().to_dict()) == study.StudyConfig()
    with pytest.raises(ValueError, match="unknown lab config key.*critcs"):
        study.StudyConfig.from_dict({"critcs": []})
    with pytest.raises(ValueError, match="unknown process key"):
        study.StudyConfig.from_dict({"settings": {"x": {"lenght": 3}}})


def test_lab_runs_writes_results_tables_and_plot(tmp_path, capsys):
    (tmp_path / "c.json").write_text(json.dumps(TINY))
    doc_md = tmp_path / "lab.md"
    doc_md.write_text("intro\n<!-- lab:table contrasts -->\nSTALE\n<!-- /lab:table -->\nrest\n"
                      "<!-- lab:table closed loop -->\n<!-- /lab:table -->\n")
    out = tmp_path / "r.json"
    argv = ["lab", "--config", str(tmp_path / "c.json"), "--out", str(out), "--update-doc", str(doc_md)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for name in ("settings", "contrasts", "estimators: tiny", "exact-critic bias", "closed loop", "sae - best gae"):
        assert name in text, name
    doc = json.loads(out.read_text())
    seeds = doc["per_seed"]["tiny"]
    assert set(seeds["critics"]) == {c["name"] for c in TINY["critics"]}
    row = seeds["critics"]["exact"]["metrics"]["sae p0.2"]  # every metric per seed: --seed-metrics all
    assert len(row["cos_batch"]) == 3 and all(-1 <= x <= 1 for x in row["cos_batch"]) and "pearson_segment" in row
    fit = seeds["critics"]["learned mc n8"]["fit"]
    assert min(fit["rmse"]) > 0 and min(fit["rmse_constant"]) > 0
    assert len(doc["closed_loop"]["auc"]["sae p0.2"]) == 2 and "exact" in doc["closed_loop"]["auc"]
    md = doc_md.read_text()
    assert md.startswith("intro\n") and "STALE" not in md and "\nrest\n" in md
    tables = present.all_tables(doc)
    assert present.doc_tables(md) == {"contrasts": tables["contrasts"], "closed loop": tables["closed loop"]}
    # again: refused without --overwrite, nothing changed
    before = out.read_bytes()
    assert main(argv) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    # --from presents the same results without running; --json prints the summary
    assert main(["lab", "--from", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["summary"] == doc["summary"] and printed["closed_loop"] == doc["closed_loop"]["summary"]
    pytest.importorskip("matplotlib")
    assert main(["lab", "--from", str(out), "--plot", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lab_usage_errors(tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({"critcs": []}))
    assert main(["lab", "--config", str(tmp_path / "bad.json")]) == 2
    assert "unknown lab config key(s) critcs" in capsys.readouterr().err
    assert main(["lab", "--quick", "--seeds", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["lab", "--from", str(tmp_path / "bad.json")]) == 2
    assert "no 'summary'" in capsys.readouterr().err
    marker = tmp_path / "m.md"
    marker.write_text("<!-- lab:table nosuch -->\n<!-- /lab:table -->\n")
    with pytest.raises(ValueError, match="names no table"):
        present.update_doc(marker.read_text(), {"contrasts": "x"})
    results = ROOT / "docs" / "lab-results.json"
    before = marker.read_bytes()
    assert main(["lab", "--from", str(results), "--update-doc", str(marker)]) == 1
    assert "'nosuch' names no table" in capsys.readouterr().err and marker.read_bytes() == before


def test_docs_tables_are_the_ones_the_results_regenerate():
    """docs/lab.md's tables come from docs/lab-results.json (`sae lab --from docs/lab-results.json
    --update-doc docs/lab.md`): none was edited by hand or left stale."""
    doc = json.loads((ROOT / "docs" / "lab-results.json").read_text())
    found = present.doc_tables((ROOT / "docs" / "lab.md").read_text())
    assert {"settings", "contrasts", "closed loop", "exact-critic bias"} <= set(found)
    regenerated = present.all_tables(doc)
    for name, body in found.items():
        assert body == regenerated[name], name


def test_demo_runs_through_the_user_code_path(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["demo", "--out", str(tmp_path), "--seeds", "2", "--tasks", "3", "--samples", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("rollouts.parquet", "recomputed.parquet", "report.html", "lab.png", "index.html"):
        assert (tmp_path / name).exists(), name
    assert "SAE wins" in out and "SAE loses" in out and "sae p0.2 - gae 0.95" in out
    for label in ("gae", "mc", "vapo", "sae", "sae_threshold0.5"):
        assert f"{label} " in out.split("3. ")[1]
    from sae_core import trajectory as tj

    table = tj.read_table(tmp_path / "recomputed.parquet")
    assert {"true_advantages", "advantages_sae", "advantages_gae"} <= set(table.schema.names)
    # a second run refuses to replace the first one's files, and --overwrite replaces them
    assert main(["demo", "--out", str(tmp_path), "--seeds", "2", "--tasks", "3", "--samples", "2"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--seeds", "2", "--tasks", "3", "--samples", "2",
                 "--overwrite", "--no-report", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [c["title"] for c in doc["cells"]] == ["SAE wins", "SAE loses"]
    assert len(doc["cells"][0]["by_seed"]["sae p0.2"]) == 2 and set(doc["recomputed_cosine"]) >= {"gae", "sae"}
