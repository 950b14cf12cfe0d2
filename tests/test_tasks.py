"""Task metrics against hand-computed answers."""

import math

import numpy as np
import pytest

from trtq.evaluation.tasks import (DenseAccumulator, DetectionAccumulator, Detections, GenericAccumulator,
                                   SequenceAccumulator, average_precision, box_iou, ctc_greedy, decode_detections,
                                   edit_distance, mask_iou, nms)


def test_box_iou_of_half_overlapping_boxes_is_one_third():
    # two 10x10 boxes overlapping in a 5x10 strip: 50 / (100 + 100 - 50)
    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0] == pytest.approx(1 / 3)
    assert box_iou([[0, 0, 10, 10]], [[0, 0, 10, 8]])[0, 0] == pytest.approx(0.8)
    assert box_iou([[0, 0, 1, 1]], [[2, 2, 3, 3]])[0, 0] == 0


def test_nms_drops_the_weaker_of_two_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 8], [20, 20, 30, 30]], float)
    keep = nms(boxes, np.array([0.6, 0.9, 0.5]), iou_threshold=0.5)
    assert keep.tolist() == [1, 2]  # box 0 has IoU 0.8 with the better box 1


def _head(rows, classes):
    """A YOLO-style [1, 4+C, N] head from (cx, cy, w, h, class, score) rows."""
    out = np.zeros((1, 4 + classes, len(rows)))
    for j, (cx, cy, w, h, c, s) in enumerate(rows):
        out[0, :4, j] = (cx, cy, w, h)
        out[0, 4 + c, j] = s
    return out


def test_two_box_detection_known_precision_recall_map():
    # FP32: A = [0,0,10,10] and B = [20,20,30,30], class 0
    fp32 = _head([(5, 5, 10, 10, 0, 0.9), (25, 25, 10, 10, 0, 0.8)], 2)
    # INT8: A shrunk to [0,0,10,8] (IoU 0.8, a hit), a spurious box at [40,40,50,50], and B moved to
    # [25,20,35,30] (IoU 1/3: a miss), scores 0.9, 0.85, 0.6
    int8 = _head([(5, 4, 10, 8, 0, 0.9), (45, 45, 10, 10, 0, 0.85), (30, 25, 10, 10, 0, 0.6)], 2)
    acc = DetectionAccumulator("channels_first")
    acc.update(fp32, int8)
    r = acc.result()
    assert (r["reference_boxes"], r["int8_boxes"]) == (2, 3)
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 2)
    # ranked hit, miss, miss: precision 1 at recall 0.5, recall never grows past it → AP = 0.5
    assert r["map50"] == pytest.approx(0.5)
    assert r["class_agreement"] == 1.0


def test_detection_class_flip_counts_against_class_agreement_and_map():
    fp32 = _head([(5, 5, 10, 10, 0, 0.9), (25, 25, 10, 10, 1, 0.8)], 2)
    int8 = _head([(5, 5, 10, 10, 0, 0.9), (25, 25, 10, 10, 0, 0.8)], 2)  # B's class flipped 1 → 0
    acc = DetectionAccumulator("channels_first")
    acc.update(fp32, int8)
    r = acc.result()
    assert r["class_agreement"] == 0.5 and r["precision"] == 0.5 and r["recall"] == 0.5
    # class 0: hit (0.9) then a false positive: AP 1; class 1: its one box never found: AP 0
    assert r["map50"] == pytest.approx(0.5)


def test_channels_last_and_nms_layouts_decode_the_same_boxes():
    head = _head([(5, 5, 10, 10, 1, 0.9), (5, 5, 10, 9, 1, 0.7), (25, 25, 10, 10, 0, 0.1)], 2)
    first = decode_detections(head, "channels_first")[0]
    last = decode_detections(np.swapaxes(head, 1, 2), "channels_last")[0]
    np.testing.assert_allclose(first.boxes, [[0, 0, 10, 10]])  # the 0.7 duplicate suppressed, 0.1 below threshold
    np.testing.assert_allclose(last.boxes, first.boxes)
    rows = np.array([[[0, 0, 10, 10, 0.9, 1], [20, 20, 30, 30, 0.1, 0]]])
    done = decode_detections(rows, "nms")[0]
    assert done.classes.tolist() == [1] and done.scores.tolist() == [0.9]


def test_average_precision_of_a_known_ranking():
    # hit, miss, hit against 2 objects: precision 1 at recall 1/2, 2/3 at recall 1 → 0.5 + 0.5 * 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1]), 2) == pytest.approx(5 / 6)
    assert math.isnan(average_precision(np.array([0.5]), np.array([0]), 0))


def test_ground_truth_map_of_both_sides():
    fp32 = _head([(5, 5, 10, 10, 0, 0.9)], 1)
    int8 = _head([(25, 25, 10, 10, 0, 0.9)], 1)
    truth = [Detections(np.array([[0, 0, 10, 10.0]]), np.ones(1), np.zeros(1, int))]
    acc = DetectionAccumulator("channels_first")
    acc.update(fp32, int8, truth)
    gt = acc.result()["ground_truth"]
    assert gt["fp32_map50"] == 1.0 and gt["int8_map50"] == 0.0


def _steps(seq, classes=6):
    """One-hot [T, C] per-step distributions whose argmax is ``seq``."""
    return np.eye(classes)[seq] * 0.9 + 0.1 / classes


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    assert ctc_greedy(_steps([0, 3, 3, 0, 3, 5, 5, 2])[None]) == [[3, 3, 5, 2]]


def test_edit_distance_known_answers():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([3, 5, 2], [3, 3, 5]) == 2
    assert edit_distance([], [1, 2]) == 2


def test_ctc_pair_known_cer():
    fp32 = np.stack([_steps([0, 3, 3, 0, 5, 2]), _steps([1, 0, 1, 4, 0, 0])])  # decodes to [3,5,2] and [1,1,4]
    int8 = np.stack([_steps([0, 3, 0, 3, 5, 0]), _steps([1, 0, 1, 4, 4, 0])])  # [3,3,5] and [1,1,4]
    acc = SequenceAccumulator(blank=0)
    acc.update(fp32, int8)
    r = acc.result()
    assert r["cer"] == pytest.approx(2 / 6)  # 2 edits on the first line, none on the second, 6 reference chars
    assert r["identical_rate"] == 0.5
    assert r["step_agreement"] == pytest.approx(8 / 12)  # steps 0, 1, 4 of the first, all but one of the second


def test_mask_pair_known_iou():
    fp32 = np.zeros((1, 1, 4, 4))
    fp32[0, 0, :2, :3] = 0.9  # 6 pixels
    int8 = np.zeros((1, 1, 4, 4))
    int8[0, 0, :2, 1:3] = 0.8  # 4 of them
    int8[0, 0, 3, 3] = 0.7  # and one more
    acc = DenseAccumulator(threshold=0.5)
    acc.update(fp32, int8)
    r = acc.result()
    assert r["mask_iou"] == pytest.approx(4 / 7)
    assert r["pixel_agreement"] == pytest.approx(13 / 16)
    assert mask_iou(fp32 > 0.5, int8 > 0.5) == pytest.approx(4 / 7)


def test_dense_argmax_maps_mean_iou_over_classes():
    fp32 = np.zeros((1, 2, 1, 4))
    fp32[0, 1, 0, 2:] = 1  # classes [0, 0, 1, 1]
    int8 = np.zeros((1, 2, 1, 4))
    int8[0, 1, 0, 1:] = 1  # classes [0, 1, 1, 1]
    acc = DenseAccumulator()
    acc.update(fp32, int8)
    r = acc.result()
    assert r["mask_iou"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # class 0: 1 of 2, class 1: 2 of 3


def test_generic_leaves_cosine_out_for_one_value_per_sample():
    acc = GenericAccumulator()
    acc.update(np.array([[1.0], [2.0]]), np.array([[1.1], [1.9]]))
    r = acc.result()
    assert "cosine" not in r and r["max_abs_error"] == pytest.approx(0.1)
    assert r["sqnr_db"] == pytest.approx(10 * math.log10(5 / 0.02))
    wide = GenericAccumulator()
    wide.update(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))
    assert wide.result()["cosine"] == 0.0


def test_task_inferred_from_shape_and_values():
    from trtq.evaluation.tasks import infer_task

    rng = np.random.default_rng(0)
    assert infer_task(rng.normal(size=(2, 10)))[0] == "classification"
    probs = rng.random((2, 40, 30))
    assert infer_task(probs / probs.sum(-1, keepdims=True))[0] == "sequence"
    assert infer_task(np.log(probs / probs.sum(-1, keepdims=True)))[0] == "sequence"  # log-softmax too
    assert infer_task(rng.normal(size=(2, 84, 8400)))[0] == "detection"  # YOLOv8 [B, 4+80, N]
    assert infer_task(rng.normal(size=(2, 25200, 85)))[0] == "detection"
    task, why = infer_task(rng.random((2, 1, 64, 64)))
    assert task == "dense" and "[B, 1, 64, 64]" in why
    assert infer_task(rng.random((2, 1)))[0] == "generic"  # one probability per sample (a VAD)
    assert infer_task(rng.random((2, 3, 4)))[0] == "generic"


def test_build_reports_the_task_and_custom_metric_gets_the_inputs(tiny, run_cli):
    import json

    from conftest import write_job

    (tiny["dir"] / "metric.py").write_text(
        "import numpy as np\n"
        "def with_inputs(fp32, int8, labels, inputs):\n"
        "    return {'input_mean': float(inputs['input'].mean()), 'n': len(inputs['input'])}\n")
    job = dict(tiny["job"])
    job["evaluation"] = dict(job["evaluation"], metric="metric.py:with_inputs", per_layer_samples=0)
    code, _, err = run_cli("build", write_job(tiny["dir"] / "job.yaml", job), "-q")
    assert code == 0, err
    rep = json.loads((tiny["dir"] / "out" / "tiny" / "report.json").read_text())
    assert rep["custom_metric"] == {"input_mean": pytest.approx(float(tiny["x"].mean()), rel=1e-5), "n": 24.0}
    task = rep["tasks"]["output"]
    assert task["task"] == "classification" and "one score per class" in task["inferred_from"]
    assert task["top1_agreement"] == rep["int8"]["accuracy"]["top1_agreement"]
    md = (tiny["dir"] / "out" / "tiny" / "report.md").read_text()
    assert "| `output` | classification (inferred: [B, 3]: one score per class) | top-1 agreement" in md


def test_a_task_that_does_not_fit_the_output_is_a_clear_error(tiny, run_cli):
    from conftest import assert_clean_error, write_job

    job = dict(tiny["job"])
    job["evaluation"] = dict(job["evaluation"], task={"nope": "dense"})
    code, _, err = run_cli("build", write_job(tiny["dir"] / "job.yaml", job), "-q")
    assert_clean_error(code, err, "evaluation.task", "no output 'nope'", "output")


def test_an_output_whose_first_axis_is_not_the_batch_is_generic():
    from trtq.evaluation.tasks import infer_task

    task, why = infer_task(np.zeros((2, 32, 128)), batch_first=False)  # silero-vad's state [2, B, 128]
    assert task == "generic" and "not the batch" in why


def test_a_yolo_style_head_is_scored_as_detection_end_to_end(tmp_path, run_cli):
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from conftest import write_job

    # x [N, 6, 256] (cx, cy, w, h, two class scores per candidate) → MatMul by a near-identity → the same layout
    rng = np.random.default_rng(0)
    w = (np.eye(256) + rng.normal(0, 0.001, (256, 256))).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["head"], name="mm")], "head",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 256])],
                              [helper.make_tensor_value_info("head", TensorProto.FLOAT, ["N", 6, 256])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "head.onnx")
    x = np.zeros((8, 6, 256), np.float32)
    x[:, :2] = rng.uniform(0, 1, (8, 2, 256))  # normalized coordinates: one int8 scale fits boxes and scores
    x[:, 2:4] = rng.uniform(0.05, 0.2, (8, 2, 256))
    x[:, 4:] = rng.uniform(0, 1, (8, 2, 256)) ** 8  # a few confident candidates
    np.savez(tmp_path / "data.npz", x=x)
    job = {"name": "head", "model": "head.onnx", "calibration": {"path": "data.npz", "batch_size": 4},
           "evaluation": {"path": "data.npz", "batch_size": 4, "per_layer_samples": 0,
                          "latency": {"batch_sizes": [1], "warmup": 1, "iterations": 2}}, "output": "out"}
    code, _, err = run_cli("build", write_job(tmp_path / "job.yaml", job), "-q")
    assert code == 0, err
    res = json.loads((tmp_path / "out" / "head" / "report.json").read_text())["tasks"]["head"]
    assert res["task"] == "detection" and "[B, 6, 256]" in res["inferred_from"]
    assert res["reference_boxes"] > 0 and 0.5 < res["recall"] <= 1 and 0.5 < res["map50"] <= 1
    assert "top1_agreement" not in json.loads((tmp_path / "out" / "head" / "report.json").read_text())["int8"][
        "accuracy"]
