"""qrun.measure.agreement: two runs of a model compared in the task's terms.

The runs are built as the decoders read them: a YOLOv8 head [1, 4 + C, N] with boxes in
input pixels and sigmoid scores, SSD post-processing outputs, class maps, MoveNet
keypoints; each test knows by construction what differs.
"""

from __future__ import annotations

import numpy as np

from qrun.measure import agreement
from qrun.model.manifest import Task
from qrun.tasks import roles

SIZE = 64  # input 64x64
NAMES = {0: "person", 1: "bus", 2: "dog"}


def yolo_head(objects: list, anchors: int = 20) -> np.ndarray:
    """[1, 4 + 3, anchors]: anchor k holds objects[k] = (class, score, cx, cy, w, h) in pixels;
    the other anchors hold a small box scoring 0.01 everywhere."""
    head = np.zeros((1, 4 + 3, anchors), np.float32)
    head[0, :4] = np.array([[5.0], [5.0], [2.0], [2.0]])
    head[0, 4:] = 0.01
    for k, (cls, score, cx, cy, w, h) in enumerate(objects):
        head[0, :4, k] = (cx, cy, w, h)
        head[0, 4 + cls, k] = score
    return head


def yolo_run(samples: list) -> list:
    """One run of a yolov8 model: output 0 as [N, values]."""
    return [np.stack([yolo_head(objects).reshape(-1) for objects in samples])]


YOLO = Task(roles.DETECT, outputs={roles.HEAD: 0}, decoder=roles.YOLOV8)
SHAPES = [[1, 7, 20]]
SCENE = [[(0, 0.9, 16, 16, 20, 30), (1, 0.8, 44, 40, 30, 20)],
         [(2, 0.7, 32, 32, 10, 10)],
         []]


def decoded(samples: list) -> list:
    return agreement.decode(YOLO, SHAPES, yolo_run(samples), (SIZE, SIZE))


def test_yolo_decode_gives_the_planted_boxes_normalised():
    [first, second, empty] = decoded(SCENE)
    assert list(first.ids) == [0, 1] and np.allclose(first.scores, [0.9, 0.8])
    assert np.allclose(first.boxes[0], np.array([6, 1, 26, 31]) / SIZE)
    assert list(second.ids) == [2] and len(empty) == 0


def test_the_same_detections_agree_although_raw_values_far_from_them_differ():
    reference = yolo_run(SCENE)
    other = [reference[0].copy()]
    # Large single-value differences where no detection is: an unlit anchor's box moves
    # by 30 pixels, another's score by 0.2 (still under the threshold).
    other[0][0, 0 * 20 + 10] += 30.0
    other[0][1, 5 * 20 + 12] += 0.2
    # ... and small ones at a detection: its score by 0.05, its box by a pixel.
    other[0][0, 4 * 20 + 0] -= 0.05
    other[0][0, 1 * 20 + 0] += 1.0
    a = agreement.detection_agreement(
        agreement.decode(YOLO, SHAPES, reference, (SIZE, SIZE)),
        agreement.decode(YOLO, SHAPES, other, (SIZE, SIZE)), every_sample=True)
    assert a.ok and a.value == 1.0 and a.differing == []
    assert a.text.startswith("3 of 3 detections match (100%") and "3 of 3 samples agree" in a.text


def test_a_lost_detection_fails_and_is_named():
    moved = [SCENE[0][:1], SCENE[1], SCENE[2]]  # the bus is gone from sample 0
    a = agreement.detection_agreement(decoded(SCENE), decoded(moved), every_sample=True,
                                      names=NAMES)
    assert not a.ok and a.differing == [0] and a.value == 2 / 3
    assert "sample 0: 1 detections, the reference 2, bus (1) 0.80 at (45,47)-(92,78)% " \
           "unmatched" in a.text


def test_a_class_flip_and_a_score_change_are_named():
    flipped = [[(0, 0.9, 16, 16, 20, 30), (2, 0.8, 44, 40, 30, 20)],
               [(2, 0.45, 32, 32, 10, 10)], []]
    a = agreement.detection_agreement(decoded(SCENE), decoded(flipped), every_sample=True,
                                      names=NAMES)
    assert not a.ok and a.differing == [0, 1]
    assert "an extra dog (2) 0.80" in a.text and "bus (1) 0.80" in a.text
    assert "sample 1: dog (2) scores 0.45, the reference 0.70" in a.text


def test_a_detection_near_the_threshold_may_appear_on_one_side_only():
    near = [SCENE[0] + [(2, 0.27, 50, 10, 8, 8)], SCENE[1], SCENE[2]]
    a = agreement.detection_agreement(decoded(SCENE), decoded(near), every_sample=True)
    assert a.ok and a.differing == [] and a.value == 3 / 4  # matched over the larger count
    far = [SCENE[0] + [(2, 0.6, 50, 10, 8, 8)], SCENE[1], SCENE[2]]
    assert not agreement.detection_agreement(decoded(SCENE), decoded(far),
                                             every_sample=True).ok


def test_no_detection_where_the_reference_has_some_always_fails():
    nothing = decoded([[], [], []])
    a = agreement.detection_agreement(decoded(SCENE), nothing, minimum=0.0)
    assert not a.ok and a.details["empty"] == [0, 1]
    assert a.text.endswith("; no detection on samples 0, 1 where the reference has 3")
    quiet = agreement.detection_agreement(nothing, nothing)
    assert quiet.ok and quiet.text == "neither run detects anything in 3 samples"


def test_the_gate_reading_passes_at_the_minimum_share_of_matches():
    """Without every_sample (the convert gate), one lost detection in many passes."""
    many = [[(0, 0.9, 8 + 12 * (k % 5), 8 + 12 * (k // 5), 6, 6) for k in range(10)]]
    fewer = [many[0][:9]]
    a = agreement.detection_agreement(decoded(many), decoded(fewer))
    assert a.ok and a.value == 0.9 and a.differing == [0]
    assert not agreement.detection_agreement(decoded(many), decoded([many[0][:8]])).ok


def test_ssd_outputs_decode_and_compare():
    task = Task(roles.DETECT, outputs={roles.BOXES: 0, roles.CLASSES: 1, roles.SCORES: 2,
                                       roles.COUNT: 3}, decoder=roles.SSD)
    shapes = [[1, 4, 4], [1, 4], [1, 4], [1]]
    boxes = np.array([[[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [9e9, -1, 5, 5], [0, 0, 0, 0]]])
    run = [boxes.reshape(1, -1), np.array([[1, 3, 7, 0]]), np.array([[0.9, 0.6, 0.99, 0]]),
           np.array([[2]])]
    [found] = agreement.decode(task, shapes, run, (SIZE, SIZE))
    assert list(found.ids) == [1, 3] and np.allclose(found.boxes[1], [0.5, 0.5, 1, 1])
    padding = [r.copy() for r in run]
    padding[0][0, 8:] = 1e38  # rows past count are whatever memory held
    again = agreement.decode(task, shapes, padding, (SIZE, SIZE))
    assert agreement.detection_agreement([found], again, every_sample=True).ok


def test_top1_agreement_names_the_flips():
    a = agreement.top1_agreement(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]), names=NAMES)
    assert not a.ok and a.value == 0.75 and a.differing == [2]
    assert a.text == "top-1 agrees on 3 of 4 samples (75%); sample 2: dog (2) became bus (1)"
    task = Task(roles.CLASSIFY, outputs={roles.SCORES: 0})
    scores = np.array([[0.1, 0.9], [0.8, 0.2]])
    assert list(agreement.decode(task, [[1, 2]], [scores], (SIZE, SIZE))) == [1, 0]


def test_pixel_agreement_of_class_maps_and_scores():
    maps = np.zeros((2, 1, 10, 10))
    maps[:, 0, :5] = 15
    other = maps.copy()
    other[1, 0, :2] = 0  # 20 of 100 pixels of sample 1: class 15 read as 0
    task = Task(roles.SEGMENT, outputs={roles.MASK: 0}, decoder=roles.CLASS_MAP)
    a = agreement.compare(task, agreement.decode(task, [[1, 10, 10]], [maps], (10, 10)),
                          agreement.decode(task, [[1, 10, 10]], [other], (10, 10)))
    assert a.value == 0.9 and not a.ok and a.differing == [1]
    assert a.text == ("class maps agree on 90.00% of pixels over 2 samples; sample 1 agrees "
                      "on 80.0%, mostly class 15 read as class 0")
    scores = np.eye(3)[maps[:, 0].astype(int) % 3][:, None]  # [2, 1, 10, 10, 3]
    argmax = Task(roles.SEGMENT, outputs={roles.MASK: 0}, decoder=roles.ARGMAX)
    decoded_maps = agreement.decode(argmax, [[1, 10, 10, 3]], [scores], (10, 10))
    assert decoded_maps.shape == (2, 10, 10) and decoded_maps[0, 0, 0] == 0


def test_keypoint_distance_over_the_sure_keypoints():
    rng = np.random.default_rng(0)
    reference = np.concatenate([rng.uniform(0, 1, (2, 17, 2)), np.full((2, 17, 1), 0.9)], -1)
    other = reference.copy()
    other[0, 9, 1] += 0.2  # left wrist of sample 0 moves by a fifth of the image
    other[1, :, :2] += 0.001
    a = agreement.keypoint_agreement(reference, other)
    assert a.ok and round(a.value, 4) == round((0.2 / 17 + np.hypot(0.001, 0.001)) / 2, 4)
    assert "the farthest: left_wrist in sample 0, 0.200" in a.text
    strict = agreement.keypoint_agreement(reference, other, tolerance=0.01)
    assert not strict.ok and strict.differing == [0]
    reference[0, 9, 2] = 0.1  # the reference is not sure of it: not compared
    assert agreement.keypoint_agreement(reference, other, tolerance=0.01).ok


def test_raw_tasks_are_not_decoded():
    assert agreement.decode(Task(roles.RAW), [[1, 4]], [np.zeros((1, 4))], (SIZE, SIZE)) is None
