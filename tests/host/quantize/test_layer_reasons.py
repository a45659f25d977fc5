"""The causes `evaluate --layers` names, read from real graphs: Coral's MobileNet V2 (quantized
per tensor, as TF1's quantization-aware training wrote it) has depthwise channels whose
weights keep no level at all, the motivating case for per-channel weights."""

from __future__ import annotations

from qdeploy.modelfile import tflite_graph
from qdeploy.quantize import layer_reasons


def per_tensor_flags(path) -> dict:
    graph = tflite_graph.load(path)
    found = {}
    for op in graph.ops:
        hit = layer_reasons.per_tensor_reason(op, op.outputs[0], graph, None, {}, {})
        if hit:
            found[op.index] = (op.name, *hit)
    return found


def test_per_tensor_weights_with_empty_channels_are_named(coral_dir):
    flags = per_tensor_flags(coral_dir / "mobilenet_v2_1.0_224_quant.tflite")
    name, severity, reason = flags[1]  # the first depthwise convolution
    assert name == "DEPTHWISE_CONV_2D" and "uses ±0 of" in reason and "32 channels" in reason
    assert severity >= 100
    assert layer_reasons.FIXES["per-tensor"].startswith("convert with per-channel weights")


def test_per_channel_weights_are_not_flagged(coral_dir):
    # MoveNet (TF2 post-training quantization) mixes both: only its per-tensor ops can be flagged.
    path = coral_dir / "movenet_single_pose_lightning_ptq.tflite"
    graph = tflite_graph.load(path)
    flags = per_tensor_flags(path)
    per_channel = [op.index for op in graph.ops if op.name in layer_reasons.WEIGHTED
                   and layer_reasons.scale_count(graph, op.inputs[1]) > 1]
    assert per_channel and not set(per_channel) & set(flags)
    assert all(layer_reasons.scale_count(graph, graph.ops[i].inputs[1]) == 1 for i in flags)
