"""A short real meta-training on Omniglot learns: unseen characters are classified far above chance."""

import dataclasses
import json
import os
import runpy
import sys

import numpy as np

from tf_maml import performance
from tf_maml.training import best_checkpoints, read_budget, start_from_export
from tf_maml.event_logs import decode_image, read_events, read_scalars
from tf_maml.recipes import omniglot
from tf_maml.serving import load, read_metadata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_short_meta_training_beats_chance_on_unseen_characters(paper_classes, tmp_path, monkeypatch):
    config = dataclasses.replace(
        omniglot.PRESETS["5way1shot"], meta_batch=8, meta_steps=80, steps_per_epoch=40,
        eval_inner_steps=5, task_execution="map", validation_tasks=8,
    )
    maml = omniglot.train(config, str(tmp_path), data=paper_classes, verbose=0)
    assert int(maml.optimizer.iterations) == 80
    results = omniglot.evaluate(maml, config, paper_classes, tasks=100, seed=3)
    # Chance is 20%.
    assert results["accuracy"] > 0.55, results
    assert results["by_steps"]["5"]["accuracy"] > results["by_steps"]["0"]["accuracy"] + 0.2
    # Meta-test classes are characters never seen in meta-training.
    assert not set(paper_classes.meta_test.label_ids) & set(paper_classes.meta_train.label_ids)
    assert (tmp_path / "budget.json").exists() and (tmp_path / "maml.keras").exists()
    assert np.isfinite(results["ci95"])

    # TensorBoard: losses and accuracies per epoch (steps 0, 1), training and validation, and one episode's
    # images on the same axis: 5 rows of 28 pixels, each its support image, a gap and its query image.
    for split in ("train", "validation"):
        scalars = read_scalars(str(tmp_path / "logs" / split))
        for tag in ("epoch_loss", "epoch_accuracy", "epoch_pre_adaptation_loss"):
            assert sorted(scalars[tag]) == [0, 1], (split, tag, scalars.get(tag))
        assert scalars["epoch_accuracy"][1] > 0.3
    images = read_events(str(tmp_path / "logs" / "train"))["episode"]
    assert list(images) == [0]
    grid = decode_image(images[0])
    assert grid.shape[:2] == (5 * 28, 3 * 28)
    assert grid[:, 28:56].std() == 0 and grid[:, :28].std() > 0  # the gap is blank; the images are not

    # The best epochs by validation accuracy are kept (here both), best first: eval_omniglot.py --best
    # evaluates them as one ensemble, MAML++'s protocol.
    validation = read_scalars(str(tmp_path / "logs" / "validation"))["epoch_accuracy"]
    ranked = sorted(validation, key=lambda epoch: (-validation[epoch], epoch))
    kept = best_checkpoints(str(tmp_path), 2)
    assert [os.path.basename(p) for p in kept] == [f"ckpt-{40 * (epoch + 1)}" for epoch in ranked]
    monkeypatch.setattr(performance, "set_graph_optimization", lambda level: None)
    monkeypatch.setattr(performance, "run_tasks_in_parallel", lambda: None)
    monkeypatch.setattr(omniglot, "load_classes", lambda args, split, parser: paper_classes)
    out = tmp_path / "best.json"
    monkeypatch.setattr(sys, "argv", ["eval_omniglot.py", "--workdir", str(tmp_path), "--best", "2", "--tasks", "10",
                                      "--steps", "5", "--json", str(out)])
    runpy.run_path(os.path.join(ROOT, "scripts", "eval_omniglot.py"), run_name="__main__")
    ensemble = json.loads(out.read_text())
    assert ensemble["ensemble"] == kept and ensemble["meta_steps"] == [40 * (epoch + 1) for epoch in ranked]
    assert ensemble["accuracy"] > 0.4
    # Exported, the best epoch says how many steps its budget's wall time spent past it; a continuation keeps that
    exported = omniglot.export(str(tmp_path), str(tmp_path / "best"), paper_classes, checkpoint=kept[0])
    best = read_metadata(exported)
    step = int(kept[0].rsplit("-", 1)[1])
    assert best["meta_steps_trained"] == best["training"]["meta_steps"] == step
    assert best["training"].get("discarded_meta_steps", 0) == 80 - step
    assert best["source_checkpoint"].endswith(os.path.join("best", os.path.basename(kept[0])))
    # Test-time steps chosen on validation are what the export serves and says it serves.
    three = omniglot.export(str(tmp_path), str(tmp_path / "best"), paper_classes, checkpoint=kept[0],
                            eval_inner_steps=3)
    assert read_metadata(three)["config"]["eval_inner_steps"] == 3 and load(three).eval_inner_steps == 3
    assert omniglot.load_for_evaluation(saved_model=three)[1].eval_inner_steps == 3
    assert best["config"]["eval_inner_steps"] == 5 and load(exported).eval_inner_steps == 5
    continued = str(tmp_path / "continued")
    assert start_from_export(omniglot.build_meta_learner(config), exported, continued) == step
    assert read_budget(os.path.join(continued, "budget.json")).get("discarded_meta_steps", 0) == 80 - step

    # Exported with the budget a continuation writes: no path of the training machine ships.
    monkeypatch.chdir(tmp_path)
    budget = json.loads((tmp_path / "budget.json").read_text())
    origin = str(tmp_path / "saved_models" / "omniglot_5way1shot" / "3")
    budget.update(initialised_from=origin, changes=[{"meta_step": 40, "from": origin, "settings": {"shots": [1, 5]}}])
    (tmp_path / "budget.json").write_text(json.dumps(budget))
    training = read_metadata(omniglot.export(str(tmp_path), str(tmp_path / "models"), paper_classes, results))["training"]
    local = os.path.join("saved_models", "omniglot_5way1shot", "3")
    assert training["initialised_from"] == local and training["changes"][0]["from"] == local
    assert training["meta_steps"] == 80 and training["changes"][0]["settings"] == {"shots": [1, 5]}
