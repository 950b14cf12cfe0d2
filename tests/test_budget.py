"""calibrator.method auto, measured sensitivity and the accuracy target, on the tiny model."""

import json

import pytest

from conftest import assert_clean_error, write_job


def _build(tiny, run_cli, **sections):
    job = dict(tiny["job"])
    job["evaluation"] = dict(job["evaluation"], per_layer_samples=0)
    for key, value in sections.items():
        job[key] = dict(job.get(key, {}), **value)
    code, _, err = run_cli("build", write_job(tiny["dir"] / "job.yaml", job), "-q")
    folder = tiny["dir"] / "out" / "tiny"
    return code, err, (json.loads((folder / "report.json").read_text()) if code == 0 else None), folder


def test_auto_keeps_the_best_method_and_writes_its_ranges(tiny, run_cli):
    code, err, rep, folder = _build(tiny, run_cli, calibrator={"method": "auto"},
                                    evaluation={"task": "generic"})
    assert code == 0, err
    auto = rep["search"]["calibrator_auto"]
    assert [r["method"] for r in auto["methods"]] == ["minmax", "percentile", "entropy", "mse"]
    best = max(auto["methods"], key=lambda r: r["metric"])  # sqnr_db: larger is better
    assert auto["chosen"] == best["method"] and auto["metric"] == "output:sqnr_db"
    ranges = json.loads((folder / "ranges.json").read_text())
    assert ranges["calibrator"]["method"] == best["method"]
    assert rep["calibration"]["method"]["chosen_by"] == "calibrator.method auto"
    assert "## Calibration method (auto)" in (folder / "report.md").read_text()


def test_sensitivity_ranks_every_quantized_layer(tiny, run_cli):
    code, err, rep, folder = _build(tiny, run_cli, evaluation={"sensitivity": {"enabled": True, "samples": 8},
                                                               "task": "generic"})
    assert code == 0, err
    sens = rep["search"]["sensitivity"]
    assert {r["node"] for r in sens["layers"]} == {"conv", "convt", "fc1", "fc2", "mm", "gap"}
    gains = [r["gain"] for r in sens["layers"]]
    assert gains == sorted(gains, reverse=True) and sens["samples"] == 8
    for r in sens["layers"]:  # gain is the metric's change from all-INT8 (SQNR: larger is better)
        assert r["gain"] == pytest.approx(r["metric"] - sens["all_int8"])
    assert "sensitivity.png" in rep["plots"] and (folder / "sensitivity.png").is_file()


def test_accuracy_target_keeps_the_fewest_layers_that_meet_it(tiny, run_cli):
    target = {"metric": "sqnr_db", "minimum": 46, "selection_samples": 12, "confirmation_samples": 12}
    code, err, rep, folder = _build(tiny, run_cli, quantization={"accuracy_target": target})
    assert code == 0, err
    t = rep["search"]["accuracy_target"]
    steps = t["steps"]
    assert steps[0]["phase"] == "all INT8" and not steps[0]["meets"]
    chosen = t["float_layers"]
    assert chosen and any(s["meets"] and set(s["float_layers"]) == set(chosen) for s in steps)
    # no candidate with fewer layers met it
    assert not any(s["meets"] and s["count"] < len(chosen) for s in steps)
    assert rep["quantization"]["kept_in_float"] == chosen
    assert t["confirmation"]["samples"] == 12 and t["confirmation"]["skip"] == 12
    # the artifacts are the chosen configuration: the shipped engine scores what the search measured
    sel = [s for s in steps if set(s["float_layers"]) == set(chosen)][0]
    assert sel["metric"] >= 46
    md = (folder / "report.md").read_text()
    assert "## Accuracy target" in md and "| 1 | all INT8 | 0 |" in md


def test_trtq_eval_keeps_the_layers_the_target_chose(tiny, run_cli):
    target = {"metric": "sqnr_db", "minimum": 46, "selection_samples": 12, "confirmation_samples": 0}
    code, err, rep, folder = _build(tiny, run_cli, quantization={"accuracy_target": target})
    assert code == 0, err
    first = rep["int8"]["accuracy"]["fidelity"]["sqnr_db"]
    code, _, err = run_cli("eval", tiny["dir"] / "job.yaml", "-q")
    assert code == 0, err
    again = json.loads((folder / "report.json").read_text())
    assert again["int8"]["accuracy"]["fidelity"]["sqnr_db"] == pytest.approx(first, abs=1e-6)


def test_an_unreachable_target_is_one_line(tiny, run_cli):
    # the labels are random: FP32's own top-1 is about a third, so 0.99 cannot be met by any float layers
    target = {"metric": "top1", "minimum": 0.99}
    code, err, _, folder = _build(tiny, run_cli, quantization={"accuracy_target": target})
    assert_clean_error(code, err, "quantization.accuracy_target", "missed even with every layer in float",
                       out_dir=folder)


def test_an_unknown_target_metric_names_the_metrics_there_are(tiny, run_cli):
    code, err, _, _ = _build(tiny, run_cli, quantization={"accuracy_target": {"metric": "cer", "maximum": 0.1}})
    assert_clean_error(code, err, "no metric 'cer'", "top1_agreement", "sqnr_db")


def test_a_target_needs_one_bound_and_an_evaluation(tiny, run_cli):
    job = dict(tiny["job"])
    job["quantization"] = {"accuracy_target": {"metric": "top1", "minimum": 0.5, "max_drop": 0.1}}
    code, _, err = run_cli("build", write_job(tiny["dir"] / "job.yaml", job), "-q")
    assert_clean_error(code, err, "accuracy_target", "exactly one of max_drop, minimum, maximum")
    job["quantization"] = {"accuracy_target": {"metric": "top1", "minimum": 0.5}}
    job.pop("evaluation")
    code, _, err = run_cli("build", write_job(tiny["dir"] / "job.yaml", job), "-q")
    assert_clean_error(code, err, "accuracy_target needs an evaluation section")


class _FakeSearch:
    """A search whose candidates meet the target exactly when layers a and c are in float."""

    class progress:  # noqa: N801 - stands in for a Progress
        @staticmethod
        def note(text):
            pass

    def __init__(self):
        self.scored = []

    def score(self, split, layers=(), ranges=None, timed=False):
        self.scored.append(frozenset(layers))
        return {"m": 1.0 if {"a", "c"} <= set(layers) else 0.0}, None


def test_grow_bisect_prune_find_the_needed_pair_in_few_candidates():
    from trtq.pipeline import budget

    s = _FakeSearch()
    steps = budget.Steps(s, None, "m", ">=", 0.5, max_steps=100)
    assert not steps.try_("all INT8", [])
    chosen = budget.grow(steps, ["a", "b", "c", "d", "e", "f", "g", "h"])
    assert chosen == ["a", "b", "c"]  # k: 1, 2 miss, 4 meets, bisected to 3
    assert budget.prune(steps, chosen) == ["a", "c"]  # c is needed, b is not, a is needed
    assert [r["count"] for r in steps.rows] == [0, 1, 2, 4, 3, 2, 1]
    assert len(s.scored) == len(set(s.scored))  # no candidate scored twice


def test_the_search_stops_at_max_steps():
    from trtq.pipeline import budget

    steps = budget.Steps(_FakeSearch(), None, "m", ">=", 0.5, max_steps=3)
    steps.try_("all INT8", [])
    order = ["x", "y", "z", "a", "b", "c", "d", "e"]
    chosen = budget.grow(steps, order)
    assert len(steps.rows) == 3 and chosen == order  # out of steps: everything in float (FP32) is known to meet it


def test_a_custom_metric_with_the_inputs_drives_the_target(tiny, run_cli):
    # a metric only the user's code knows (here: mean |error| weighted by the input's mean), smaller is better
    (tiny["dir"] / "metric.py").write_text(
        "import numpy as np\n"
        "def weighted(fp32, int8, labels, inputs):\n"
        "    w = np.abs(inputs['input']).mean(axis=(1, 2, 3))[:, None]\n"
        "    return {'score': float(-np.mean(w * np.abs(fp32['output'] - int8['output'])))}\n")
    target = {"metric": "custom.score", "minimum": -0.001, "selection_samples": 12, "confirmation_samples": 12}
    code, err, rep, _ = _build(tiny, run_cli, quantization={"accuracy_target": target},
                               evaluation={"metric": "metric.py:weighted"})
    assert code == 0, err
    t = rep["search"]["accuracy_target"]
    assert t["fp32"] == 0.0 and not t["steps"][0]["meets"]  # FP32 against itself scores 0; all-INT8 misses
    chosen = [s for s in t["steps"] if set(s["float_layers"]) == set(t["float_layers"])][0]
    assert chosen["meets"] and chosen["metric"] >= -0.001
