"""The sinusoid script end to end at a tiny budget: it trains, evaluates, exports, and a rerun resumes the
run it names (its own settings and its whole budget) instead of silently starting or mixing another."""

import json
import pathlib
import runpy
import sys

import pytest

from tf_maml import serving
from tf_maml.recipes import sinusoid

REPO_SCRIPT = str(pathlib.Path(__file__).resolve().parents[1] / "scripts" / "train_sinusoid.py")


def run_script(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["train_sinusoid.py", *args])
    runpy.run_path(REPO_SCRIPT, run_name="__main__")


def test_smoke_run_trains_exports_and_resumes_with_its_own_settings(tmp_path, monkeypatch, capsys):
    workdir, base = tmp_path / "run", tmp_path / "saved_models"
    run_script(monkeypatch, "--preset", "smoke", "--shots", "5", "--workdir", str(workdir))
    results = json.loads((workdir / "results.json").read_text())
    assert results["meta_steps_done"] == 200 and results["config"]["shots"] == 5
    # Learning happened: one step from the meta-learned init beats the init itself on held-out tasks.
    assert results["maml"]["1"]["mse"] < results["maml"]["0"]["mse"]
    budget = json.loads((workdir / "budget.json").read_text())
    assert results["train_seconds"] == round(budget["wall_seconds"], 1) > 0

    # Rerunning the same command (say, to export) trains nothing more and keeps the recorded budget.
    run_script(monkeypatch, "--preset", "smoke", "--shots", "5", "--workdir", str(workdir), "--export", str(base))
    again = json.loads((workdir / "results.json").read_text())
    assert again["meta_steps_done"] == 200 and again["train_seconds"] == results["train_seconds"]
    meta = serving.read_metadata(str(base / "sinusoid"))
    assert meta["config"]["shots"] == 5 and meta["training"]["meta_steps"] == 200

    # Other settings on the same directory are refused (argparse's error, as train_omniglot.py's), naming
    # what differs; nothing saved is touched.
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_script(monkeypatch, "--preset", "smoke", "--shots", "10", "--workdir", str(workdir))
    assert exit_info.value.code == 2 and "shots: asked 10, run has 5" in capsys.readouterr().err
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before


def test_presets_get_their_own_default_directories():
    assert sinusoid.config_for_run("demo", {})[1] != sinusoid.config_for_run("paper", {})[1]
