"""qrun.tasks.roles: the one set of rules for which task a model does and which output
plays which role, fed a ModelView by hand, from the flatbuffer and from the interpreter."""

from __future__ import annotations

import pytest

from qrun.errors import UserError
from qrun.tasks import roles
from qrun.tasks.roles import (ARGMAX, BOXES, CLASS_MAP, CLASSES, COUNT, HEAD, KEYPOINTS, MASK,
                              MOVENET, SCORES, SSD, YOLOV5, YOLOV8, ModelView)
from tests.device import ssd_models
from tests.paths import CORAL

SSD_SHAPES = [[1, 10, 4], [1, 10], [1, 10], [1]]  # the op's own order: boxes, classes, scores, count


def view(outputs, inputs=([1, 320, 320, 3],), **kwargs) -> ModelView:
    return ModelView(inputs=[list(s) for s in inputs], outputs=[list(s) for s in outputs],
                     **kwargs)


# --- SSD: the op's outputs, in both model output orders ------------------------------------

def test_ssd_by_the_ops_own_order():
    v = view(SSD_SHAPES, op_names=frozenset({roles.POSTPROCESS}),
             postprocess_outputs=(0, 1, 2, 3))
    found = roles.infer(v)
    assert (found.kind, found.decoder) == ("detect", SSD)
    assert found.outputs == {BOXES: 0, CLASSES: 1, SCORES: 2, COUNT: 3}
    assert "SSD" in found.reason


def test_ssd_in_model_makers_order_count_scores_classes_boxes():
    # TF2 Model Maker: the model's outputs are count, scores, classes, boxes
    shapes = [[1], [1, 25], [1, 25], [1, 25, 4]]
    v = view(shapes, op_names=frozenset({roles.POSTPROCESS}), postprocess_outputs=(3, 2, 1, 0))
    assert roles.infer(v).outputs == {BOXES: 3, CLASSES: 2, SCORES: 1, COUNT: 0}


def test_ssd_by_signature_names_when_the_ops_outputs_are_not_the_models():
    shapes = [[1], [1, 25], [1, 25], [1, 25, 4]]
    v = view(shapes, op_names=frozenset({roles.POSTPROCESS}),
             postprocess_outputs=(None, None, None, None),
             signature_outputs={"output_0": 0, "output_1": 1, "output_2": 2, "output_3": 3})
    assert roles.infer(v).outputs == {COUNT: 0, SCORES: 1, CLASSES: 2, BOXES: 3}


def test_signature_names_that_contradict_the_shapes_are_not_taken():
    # a function returning the op's tuple names boxes output_0: by name count would be boxes
    v = view(SSD_SHAPES, op_names=frozenset({roles.POSTPROCESS}),
             signature_outputs={"output_0": 0, "output_1": 1, "output_2": 2, "output_3": 3})
    with pytest.raises(UserError, match=r"outputs are not the model's boxes .*--task raw"):
        roles.infer(v)


def test_four_outputs_that_fit_an_ssd_are_one_without_seeing_the_op():
    v = view(SSD_SHAPES, postprocess_outputs=(0, 1, 2, 3))
    assert roles.infer(v).decoder == SSD


def test_unknown_op_output_shapes_of_a_model_file_are_not_refused():
    v = view([[], [], [], []], op_names=frozenset({roles.POSTPROCESS}),
             postprocess_outputs=(0, 1, 2, 3))
    assert roles.infer(v).outputs == {BOXES: 0, CLASSES: 1, SCORES: 2, COUNT: 3}


# --- raw YOLO heads --------------------------------------------------------------------------

@pytest.mark.parametrize("shape, decoder, classes, anchors", [
    ([1, 84, 8400], YOLOV8, 80, 8400),
    ([1, 6, 2100], YOLOV8, 2, 2100),
    ([1, 25200, 85], YOLOV5, 80, 25200),
    ([1, 6300, 7], YOLOV5, 2, 6300),
])
def test_yolo_heads(shape, decoder, classes, anchors):
    found = roles.infer(view([shape], inputs=[[1, 640, 640, 3]]))
    assert (found.kind, found.decoder) == ("detect", decoder)
    assert found.outputs == {HEAD: 0}
    assert found.params == {"classes": classes, "anchors": anchors}
    assert f"{classes} classes, {anchors} anchors" in found.reason


def test_a_head_too_small_to_be_yolo_is_not_one():
    assert roles.yolo_head([1, 4, 8400]) is None  # boxes without a class
    assert roles.yolo_head([1, 8400, 5]) is None  # boxes and objectness only
    assert roles.yolo_head([2, 84, 8400]) is None  # batch of two


# --- masks, keypoints, score vectors ----------------------------------------------------------

@pytest.mark.parametrize("mask, decoder", [
    ([1, 513, 513], CLASS_MAP),
    ([1, 129, 129, 21], ARGMAX),  # about half the input's size: still a mask
    ([1, 257, 257, 1], CLASS_MAP),
])
def test_masks_near_the_input_size(mask, decoder):
    found = roles.infer(view([mask], inputs=[[1, 257, 257, 3]]))
    assert (found.kind, found.decoder, found.outputs) == ("segment", decoder, {MASK: 0})


def test_a_map_under_half_the_input_size_is_not_a_mask():
    assert not roles.is_mask([1, 64, 64, 21], [257, 257])
    assert roles.is_mask([1, 129, 129, 21], [257, 257])
    assert not roles.is_mask([1, 515, 515], [257, 257])


def test_movenet_keypoints_anywhere_among_the_outputs():
    found = roles.infer(view([[1, 1001], [1, 1, 17, 3]], inputs=[[1, 192, 192, 3]]))
    assert (found.kind, found.decoder, found.outputs) == ("pose", MOVENET, {KEYPOINTS: 1})


def test_one_score_vector_is_a_classifier():
    found = roles.infer(view([[1, 1001]], inputs=[[1, 224, 224, 3]]))
    assert (found.kind, found.outputs) == ("classify", {SCORES: 0})


# --- what does not fit ---------------------------------------------------------------------------

def test_an_unknown_layout_is_raw_and_names_the_shapes():
    found = roles.infer(view([[1, 1001], [1, 4]]))
    assert found.kind == "raw" and "[[1, 1001], [1, 4]]" in found.reason


@pytest.mark.parametrize("kind, words", [
    ("detect", "no detection decoder fits this model's outputs [[1, 3, 2]]"),
    ("segment", "no output of this model is a per-pixel map (its outputs are [[1, 3, 2]]"),
    ("pose", "MoveNet's [1, 1, 17, 3] keypoints (its outputs are [[1, 3, 2]]"),
    ("classify", "needs one [1, classes] score output; the model's outputs are [[1, 3, 2]]"),
])
def test_a_named_task_the_outputs_cannot_play_names_the_shapes(kind, words):
    with pytest.raises(UserError) as err:
        roles.roles_of(kind, view([[1, 3, 2]]))
    assert words in str(err.value) and "--task raw" in str(err.value)


def test_manifest_decoders_are_checked():
    roles.check_decoder("detect", YOLOV8)
    roles.check_decoder("pose", None, allow_none=True)
    with pytest.raises(UserError, match="the manifest's segment decoder is 'yolov8'"):
        roles.check_decoder("segment", YOLOV8)


def test_manifest_detect_roles_are_checked_against_the_shapes():
    roles.check_detect(YOLOV8, {HEAD: 0}, {"classes": 80}, [[1, 84, 8400]])
    with pytest.raises(UserError, match="the yolov8 decoder cannot read"):
        roles.check_detect(YOLOV8, {HEAD: 0}, {"classes": 79}, [[1, 84, 8400]])
    with pytest.raises(UserError, match="the ssd_postprocess decoder cannot read"):
        roles.check_detect(SSD, {BOXES: 0, CLASSES: 1, SCORES: 2, COUNT: 3},
                           {}, [[1, 10, 4], [1, 10], [1, 11], [1]])


# --- host and device see the same model the same way -------------------------------------------

@pytest.mark.parametrize("name, kind", [
    ("deeplabv3_mnv2_dm05_pascal_quant", "segment"),
    ("movenet_single_pose_lightning_ptq", "pose"),
    ("mobilenet_v1_0.25_128_quant", "classify"),
])
def test_flatbuffer_and_interpreter_give_the_same_roles(name, kind):
    from qdeploy.modelfile import selfdescribe, tasks, tflite_graph

    from qrun.model import runtime
    from qrun.tasks import pipeline

    path = CORAL / f"{name}.tflite"
    host = roles.infer(tasks.model_view(selfdescribe.describe(path), tflite_graph.load(path)))
    interpreter = runtime.make_interpreter(path)
    device = roles.infer(pipeline.model_view(interpreter))
    assert host.kind == device.kind == kind
    assert (host.outputs, host.decoder, host.params) == (device.outputs, device.decoder,
                                                          device.params)


@pytest.mark.slow
@pytest.mark.parametrize("order", ssd_models.ORDERS)
def test_ssd_fixture_roles_agree_on_host_and_device(order, tmp_path):
    from qdeploy.modelfile import selfdescribe, tasks, tflite_graph

    from qrun.model import runtime
    from qrun.tasks import pipeline

    path = ssd_models.make(tmp_path, order)
    host = roles.infer(tasks.model_view(selfdescribe.describe(path), tflite_graph.load(path)))
    device = roles.infer(pipeline.model_view(runtime.make_interpreter(path)))
    assert host.decoder == device.decoder == SSD
    assert host.outputs == device.outputs
    assert [list(s) for s in pipeline.model_view(runtime.make_interpreter(path)).outputs][
        host.outputs[BOXES]][-1] == 4


@pytest.mark.slow
def test_yolo_fixture_int8_roles_agree_on_host_and_device(ultralytics_yolo):
    from qdeploy.modelfile import selfdescribe, tasks, tflite_graph

    from qrun.model import runtime
    from qrun.tasks import pipeline

    host = roles.infer(tasks.model_view(selfdescribe.describe(ultralytics_yolo),
                                        tflite_graph.load(ultralytics_yolo)))
    device = roles.infer(pipeline.model_view(runtime.make_interpreter(ultralytics_yolo)))
    assert host == device
    assert host.decoder == YOLOV8 and host.params == {"classes": 2, "anchors": 16}


def test_box_units_come_from_the_task_params_and_else_from_the_values():
    from qrun.tasks import roles

    assert roles.boxes_normalised({roles.BOX_UNITS: roles.NORMALISED}, 37.0)  # recorded
    assert not roles.boxes_normalised({roles.BOX_UNITS: roles.PIXELS}, 0.9)
    assert roles.boxes_normalised({}, 1.0) and not roles.boxes_normalised({}, 64.0)  # guessed
