"""What the Edge TPU compiler maps: its op support table, limits and status strings.

Data only, no logic: the preflight (`qdeploy.edgetpu.preflight`) applies these rules to a
model, and the compiler-output parser (`qdeploy.edgetpu.compiler_log`) recognises the same
status strings in real op tables. Sources: coral.ai's supported-operations table
(2019 copy plus later additions from the compiler's CHANGES.md), op tables of real
compiler runs, and google-coral/edgetpu issues (see ../shared/edgetpu-facts.md).
`EVIDENCE` names, for each rule the preflight applies, the compiled twin
(tests/data/coral) or real compiler output (tests/data/compiler-logs) that shows it, and
says which rules are guesses.
"""

from dataclasses import dataclass

# Status strings exactly as the compiler prints them in its op table.
MAPPED = "Mapped to Edge TPU"
LIMITATION = ("Operation is otherwise supported, but not mapped due to some unspecified "
              "limitation")
MORE_THAN_ONE_SUBGRAPH = "More than one subgraph is not supported"
UNSUPPORTED_DTYPE = "Operation is working on an unsupported data type"
NOT_SUPPORTED = "Operation not supported"
VERSION_NOT_SUPPORTED = "Operation version not supported"
UNSUPPORTED_RANK = "Tensor has unsupported rank (up to 3 innermost dimensions mapped)"
NOT_CONSTANT = "Filter, bias, or other param is not constant at compile-time"
TWO_D_OUTPUT = "For example, a fully-connected or softmax layer with 2D output"
# Not a compiler table status: the preflight's name for an op on a dynamic-shaped tensor,
# which makes the whole compile fail ("Model not quantized" or "dynamic-sized tensors").
DYNAMIC_SHAPE = "Tensor has a dynamic size (shape_signature -1)"

STATUSES = (MAPPED, LIMITATION, MORE_THAN_ONE_SUBGRAPH, UNSUPPORTED_DTYPE, NOT_SUPPORTED,
            VERSION_NOT_SUPPORTED, UNSUPPORTED_RANK, NOT_CONSTANT, TWO_D_OUTPUT)

# Builtin ops the compiler can map (TFLite BuiltinOperator names).
SUPPORTED_OPS = frozenset({
    "LOGISTIC", "RELU", "RELU6", "RELU_N1_TO_1", "TANH", "ADD", "MAXIMUM", "MINIMUM", "MUL",
    "SUB", "CONV_2D", "DEPTHWISE_CONV_2D", "L2_NORMALIZATION", "RESHAPE", "SLICE",
    "SPACE_TO_DEPTH", "SPLIT",
    "AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION", "FULLY_CONNECTED", "MEAN", "PAD",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "SOFTMAX", "SQUEEZE", "STRIDED_SLICE",
    # added with runtime 13 / compiler 2.0.291256449
    "EXPAND_DIMS", "PACK", "QUANTIZE", "SUM", "TRANSPOSE_CONV",
    # mapped whole in Coral's keras_lstm_mnist_ptq twin (its int16 cell state included)
    "UNIDIRECTIONAL_SEQUENCE_LSTM",
    # in Coral's current table (compiler 16, runtime 14), see ADDED_IN_16
    "PRELU", "REDUCE_MAX", "REDUCE_MIN", "RSQRT", "SQUARED_DIFFERENCE", "TRANSPOSE",
})

# Ops the compilers before 2.0.291256449 did not know (CHANGES.md, see SUPPORTED_OPS).
ADDED_IN_2_0_291256449 = frozenset({"EXPAND_DIMS", "PACK", "QUANTIZE", "SUM",
                                    "TRANSPOSE_CONV"})

# Ops that only compiler 16 maps. TRANSPOSE: "Operation not supported" under compiler 15
# (log 27), mapped under 16 (logs 34, 37; google-coral/edgetpu issue 193: "Compiler
# version 16 supports 'Transpose'"). The others are in Coral's current op list (a 2024
# copy of coral.ai's table) and not in its 2019 table; no stored copy shows the table's
# runtime column and no log shows compiler 15 on them, so the preflight assumes 16 only.
ADDED_IN_16 = frozenset({"TRANSPOSE", "PRELU", "REDUCE_MAX", "REDUCE_MIN", "RSQRT",
                         "SQUARED_DIFFERENCE"})

# Coral's table, row by row (compiler 16), and what the preflight does with each caveat
# (`qdeploy.edgetpu.preflight.LIMITS`). A caveat the preflight cannot check from the
# flatbuffer alone is marked "not checked".
CORAL_TABLE = {
    "ADD": "", "AVERAGE_POOL_2D": "no fused activation",
    "CONCATENATION": "no fused activation; a constant input only with exactly 2 inputs, "
                     "all zeros; large rows refused (SIZE_LIMITS, logs 34, 35, 37)",
    "CONV_2D": "same dilation in x and y", "DEPTHWISE_CONV_2D": "same dilation in x and y",
    "EXPAND_DIMS": "", "FULLY_CONNECTED": "default weights format; 1-D output",
    "L2_NORMALIZATION": "", "LOGISTIC": "large rows refused (SIZE_LIMITS, logs 34, 37)",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "unidirectional only",
    "MAXIMUM": "", "MAX_POOL_2D": "no fused activation",
    "MEAN": "no reduction along batch; a z-reduction needs z a multiple of 4 (compiler 16; "
            "older tables: x and/or y only)",
    "MINIMUM": "", "MUL": "", "PACK": "not along batch",
    "PAD": "not along batch (compiler 15 and 16, log 36; the 2019 table: x and/or y only)",
    "PRELU": "alpha 1-D (only the innermost dimension > 1): Keras PReLU(shared_axes=[1, 2])",
    "QUANTIZE": "large rows refused (SIZE_LIMITS, logs 34, 35, 37)", "REDUCE_MAX": "not along batch", "REDUCE_MIN": "not along batch",
    "RELU": "", "RELU6": "", "RELU_N1_TO_1": "",
    "RESHAPE": "certain reshapes are not mapped for large tensor sizes (RESHAPE_MAX_DIM, "
               "logs 34, 35, 37)",
    "RESIZE_BILINEAR": "3-D input/output; may stay on the CPU to avoid precision loss",
    "RESIZE_NEAREST_NEIGHBOR": "3-D input/output; may stay on the CPU to avoid precision "
                               "loss (not checked: no twin or log shows it refused)",
    "RSQRT": "", "SLICE": "", "SOFTMAX": "1-D input, at most 16,000 elements (compiler 16: "
                                   "along the softmax axis, log 34)",
    "SPACE_TO_DEPTH": "", "SPLIT": "not along batch", "SQUARED_DIFFERENCE": "",
    "SQUEEZE": "no relayout (leading 1s only)",
    "STRIDED_SLICE": "strides 1, ellipsis mask 0, new-axis mask 0; large rows refused "
                     "(SIZE_LIMITS, logs 34, 37)", "SUB": "",
    "SUM": "as MEAN", "TANH": "", "TRANSPOSE": "by size under compiler 16 "
                                             "(SIZE_LIMITS, logs 34, 37)",
    "TRANSPOSE_CONV": "",
}

# Size limits, each bracketed by real compiles. Between the last size seen mapped and the
# first seen refused the preflight predicts refused and says "likely" in the verdict.
# Most are read from Ultralytics 8.1.11 YOLOv8n exports (onnx2tf, int8 I/O) whose .tflite,
# compiled twin and compiler log are public (github MRezqalla/GoalBuddy, commit 3d488fd,
# Models/TPU/yolov8n_saved_model at 320 = log 34, Models/imgsz 640/yolov8n_saved_model at
# 640 = log 37): the twins say which op is which row of the logs. Their heads: per level
# CONCATENATION of box (64) and class (80) channels, TRANSPOSE to NCHW, RESHAPE to
# [1,144,g*g]; CONCATENATION of the levels [1,144,A] (A = 2100 at 320, 8400 at 640); two
# STRIDED_SLICEs (box, class); the DFL: RESHAPE [1,4,16,A], two TRANSPOSEs, SOFTMAX,
# CONV_2D, RESHAPEs; LOGISTIC and a requantizing QUANTIZE of [1,80,A]; the output
# CONCATENATION [1,84,A]. A "row" is the product of the two innermost dimensions (x and z
# of the y, x, z the Edge TPU maps): the logs split on it where the element count does not
# (a LOGISTIC of 1x320x320x16, 1.6M elements in rows of 5,120, maps in log 37; one of
# 1x80x8400, 672,000 elements in one row, does not).


@dataclass(frozen=True)
class SizeLimit:
    """An op mapped up to `mapped_up_to` (elements or row), refused from `refused_from`."""

    measure: str  # "elements" or "row"
    mapped_up_to: int
    refused_from: int
    bracket: str  # the sizes seen on each side, and where


SIZE_LIMITS = {
    # Per-level maps of 1x10x10x144 and 1x20x20x144 map, 1x40x40x144 and the DFL's two
    # 1x4x16x2100 do not (log 34: 2 mapped, 3 refused; log 37: 1 mapped, 4 refused).
    "TRANSPOSE": SizeLimit("elements", 20 * 20 * 144, 4 * 16 * 2100,
                           "mapped at 1x20x20x144 (57,600 elements), refused at 1x4x16x2100 "
                           "(134,400) and 1x40x40x144 (230,400) in a YOLOv8n export at 320 "
                           "(log 34)"),
    # The box/class slices of [1,144,2100] are refused; the DFL's slices of [1,4,8400] are
    # cut off, i.e. mappable (logs 34, 37); [1,6400,3,85] slices (rows of 255) too (log 35).
    "STRIDED_SLICE": SizeLimit("row", 4 * 8400, 144 * 2100,
                               "mappable with a row of 33,600 ([1,4,8400], log 37), refused "
                               "at 302,400 ([1,144,2100] split into boxes and classes in a "
                               "YOLOv8n export at 320, log 34)"),
    # The levels' CONCATENATION [1,144,2100] refused, the output one [1,84,2100] cut off
    # (log 34); [1,84,8400] refused (log 37), [1,25200,85] refused (log 35).
    "CONCATENATION": SizeLimit("row", 84 * 2100, 144 * 2100,
                               "mappable with a row of 176,400 ([1,84,2100], log 34), refused "
                               "at 302,400 ([1,144,2100], the levels of a YOLOv8n export at "
                               "320, log 34; [1,25200,85] of a YOLOv5n at 640, log 35)"),
    # The requantizing QUANTIZE of the class scores: [1,80,2100] cut off (log 34),
    # [1,80,8400] refused (log 37); the output QUANTIZE of [1,25200,85] refused (log 35).
    "QUANTIZE": SizeLimit("row", 80 * 2100, 80 * 8400,
                          "mappable with a row of 168,000 ([1,80,2100], log 34), refused at "
                          "672,000 ([1,80,8400] in a YOLOv8n export at 640, log 37; "
                          "[1,25200,85] in a YOLOv5n at 640, log 35)"),
    # The class scores' sigmoid: [1,80,2100] cut off (log 34), [1,80,8400] refused and
    # first on the CPU (log 37); 1x320x320x16 (rows of 5,120) mapped (log 37).
    "LOGISTIC": SizeLimit("row", 80 * 2100, 80 * 8400,
                          "mappable with a row of 168,000 ([1,80,2100], log 34), refused at "
                          "672,000 ([1,80,8400] in a YOLOv8n export at 640, log 37)"),
}

# RESHAPE (logs 34, 35, 37; twin movenet): refused when a dimension reaches 2100 with
# 33,600 elements or more ([1,4,8400,1] -> [1,1,4,8400], log 37; [1,64,2100] ->
# [1,4,16,2100], log 34; [1,1600,3,85] -> [1,4800,85], log 35); mapped when no dimension
# passes 1600 whatever the size ([1,40,40,255] -> [1,1600,3,85], 408,000 elements, log 35;
# [1,144,40,40] -> [1,144,1600], cut off in log 34) or with at most 8,400 elements
# ([1,4,2100,1] -> [1,1,4,2100], log 34; [1,48,48,1] -> [1,2304,1], twin movenet). A
# reshape that keeps the three innermost dimensions (adds or drops leading 1s) moves no
# data: [1,1,4,8400] -> [1,4,8400] is cut off, not refused, in log 37.
RESHAPE_MAX_DIM = 1600
RESHAPE_MAX_ELEMENTS = 8400
RESHAPE_REFUSED_DIM = 2100
RESHAPE_REFUSED_ELEMENTS = 33600
RESHAPE_BRACKET = ("mapped with no dimension above 1600 ([1,40,40,255] -> [1,1600,3,85] in a "
                   "YOLOv5n export at 640, log 35) or up to 8,400 elements ([1,4,2100,1] -> "
                   "[1,1,4,2100], log 34); refused with a dimension of 2100 or more and "
                   "33,600 elements or more ([1,4,8400,1] -> [1,1,4,8400], log 37; "
                   "[1,64,2100] -> [1,4,16,2100], log 34; [1,1600,3,85] -> [1,4800,85], "
                   "log 35)")
MEAN_Z_MULTIPLE = 4

# Compiler versions the preflight can assume (--compiler-version); rules that differ
# between them are in `rules_for`.
DEFAULT_COMPILER = "16"

# Op versions compiler 16 cannot parse ("Didn't find op for builtin opcode 'X' version 'N'"
# then "Model could not be parsed"): op -> lowest rejected version.
REJECTED_VERSIONS = {
    "EXP": 2,             # libedgetpu issue 71 (TF 2.16)
    "TRANSPOSE_CONV": 4,  # issue 845
    "QUANTIZE": 3,        # issue 879
    "CONV_2D": 6,         # issue 631 (TF 2.9.1)
    "RSQRT": 2,           # issue 384
}

# Op versions older compilers also reject: compiler 2.0.267685300 had no RELU v2 (log 16).
REJECTED_BEFORE_2_1 = {"RELU": 2}

# Inputs (by position) that must be constant at compile time: weights, biases, shapes, axes.
PARAM_INPUTS = {
    "CONV_2D": (1, 2),
    "DEPTHWISE_CONV_2D": (1, 2),
    "FULLY_CONNECTED": (1, 2),
    "TRANSPOSE_CONV": (0, 1, 3),
    "RESHAPE": (1,),
    "PAD": (1,),
    "MEAN": (1,),
    "SUM": (1,),
    "SLICE": (1, 2),
    "STRIDED_SLICE": (1, 2, 3),
    "RESIZE_BILINEAR": (1,),
    "RESIZE_NEAREST_NEIGHBOR": (1,),
    "EXPAND_DIMS": (1,),
    "SPLIT": (0,),
    "PRELU": (1,),
    "TRANSPOSE": (1,),
    "REDUCE_MAX": (1,),
    "REDUCE_MIN": (1,),
}

# Of those, the inputs that decide an output's size: computed at run time (a SHAPE op
# feeding a RESHAPE, as Keras writes for a batch of None) they make the TFLite
# interpreter mark the output dynamic-sized, and compiler 16 fails the whole model
# ("dynamic-sized tensors", log 19).
WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "PRELU")
SIZE_INPUTS = {op: inputs for op, inputs in PARAM_INPUTS.items() if op not in WEIGHTED}

# Ops whose weights decide whether the model is quantized at all: a float weight here
# means the compiler answers "Model not quantized".
WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")

# Ops with a fused activation that must be NONE to be mapped.
NO_FUSED_ACTIVATION = frozenset({"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"})

# Data types of activation tensors the Edge TPU computes on.
QUANTIZED_DTYPES = frozenset({"UINT8", "INT8"})

SOFTMAX_MAX_ELEMENTS = 16000
INNERMOST_DIMS = 3

# The compiler custom op that replaces each Edge TPU subgraph in a compiled model.
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"

# The rules the preflight applies, each with what shows it: a compiled twin in
# tests/data/coral, a real compiler output in tests/data/compiler-logs, the docs, or
# "guess" (no twin or log shows it yet; the README lists these).
EVIDENCE = {
    "op table": "docs (coral.ai supported operations) and every twin and log",
    "lstm": "twin keras_lstm_mnist_ptq: UNIDIRECTIONAL_SEQUENCE_LSTM mapped with its int16 "
            "cell state",
    "connectivity": "twin movenet_single_pose_lightning_ptq: after ARG_MAX (op 89) leaves "
                    "the Edge TPU, ops 100-111 whose inputs stay on the Edge TPU are "
                    "mapped and ops fed by CPU results are not; twin "
                    "deeplabv3_mnv2_dm05_pascal_quant; log 06 (same op both mapped and "
                    "'More than one subgraph')",
    "leading cpu ops": "twin movenet_single_pose_lightning_ptq (CAST, QUANTIZE ahead of the "
                       "Edge TPU part); log 03",
    "float io": "log 03 (QUANTIZE 'unspecified limitation', DEQUANTIZE 'unsupported data "
                "type', everything between mapped); twin movenet_single_pose_lightning_ptq",
    "requantize": "twin movenet_single_pose_lightning_ptq (int8 -> int8 QUANTIZE mapped); "
                  "logs 02, 04",
    "dynamic batch": "guess from the issue's Keras classifiers (no twin here): compiler 16 "
                     "maps a model whose only -1 is the batch of a static shape",
    "dynamic size": "log 19 (dynamic-sized tensors); the model needs a size computed at run "
                    "time (a SHAPE op feeding RESHAPE) - which ops trigger it is a guess "
                    "from TFLite's kernels",
    "old compiler dynamic batch": "guess from log 12's note (compilers 14/15 say 'Model not "
                                  "quantized' for a batch of None)",
    "op versions": "logs 14, 15, 16 and issues 71, 384, 631",
    "multiple subgraphs": "guess: each Edge TPU subgraph holds the mapped ops that need the "
                          "same number of CPU round trips before them",
    "resize precision": "twin deeplabv3_mnv2_dm05_pascal_quant (1x1 -> 33x33 with "
                        "align_corners stays on the CPU); the whole-scale test is a guess",
    "rank": "log 26 (batch 30: 'Tensor has unsupported rank')",
    "not constant": "log 23",
    "2d output": "log 24",
    "custom op": "twins posenet_* (PosenetDecoderOp on the CPU); log 05",
    "transpose before 16": "log 27 (compiler 15: TRANSPOSE 'Operation not supported')",
    "transpose size": "logs 34 and 37 (compiler 16, YOLOv8n at 320 and 640; the .tflite "
                      "files and compiled models beside them read op by op): "
                      + SIZE_LIMITS["TRANSPOSE"].bracket,
    "reshape size": "logs 34, 37, 35 and 06, twin movenet_single_pose_lightning_ptq: "
                    + RESHAPE_BRACKET,
    "slice size": "logs 34, 37 and 35: " + SIZE_LIMITS["STRIDED_SLICE"].bracket,
    "join size": "logs 34, 37, 35 and 06: " + SIZE_LIMITS["CONCATENATION"].bracket,
    "quantize size": "logs 34, 37, 35 and 06: " + SIZE_LIMITS["QUANTIZE"].bracket,
    "logistic size": "logs 34 and 37: " + SIZE_LIMITS["LOGISTIC"].bracket + "; a YOLOv8s at "
                     "640 whose first 1x320x320x32 sigmoid stays on the CPU (same repository) "
                     "suggests a second limit on the whole map, not modelled",
    "pad channels": "log 36 (compiler 15, BlazeFace with float I/O: PAD 11 mapped, 11 of "
                    "them padding channels, e.g. [1,64,64,24] -> [1,64,64,28]); docs (the "
                    "current table: 'no padding in batch dimension')",
    "pad before 15": "docs (the 2019 table: padding along x and/or y only; no log of an "
                     "older compiler on a channel pad: a guess)",
    "mean axes": "docs (the current table: no reduction along batch, z a multiple of 4; "
                 "the 2019 table: x and/or y only)",
    "batch axis": "docs (the current table: PACK, SPLIT, REDUCE_MAX/MIN not along batch)",
    "prelu alpha": "docs (the current table: alpha must be 1-D, Keras shared_axes=[1, 2])",
    "dilation": "docs (the current table: same dilation in x and y)",
    "softmax": "docs (1-D input, at most 16,000 elements); log 24. Compiler 16: log 34 "
               "cuts off (finds mappable) a SOFTMAX of 1x4x2100x16 along its last axis of "
               "16, so under 16 the 16,000 apply to the softmax axis, not the input",
    "fused activation": "docs (pooling and concatenation without fused activation)",
    "concatenation constant": "docs (a constant input only with 2 inputs, all zeros)",
    "fully connected": "docs (default weights format, 1-D output); log 24",
    "squeeze": "docs (no relayout)",
    "strided slice": "docs (strides 1, no ellipsis or new-axis mask)",
    "added in 16": "docs (in Coral's current op list, not in its 2019 table; runtime column "
                   "not seen: a guess that they came with 16) for PRELU, REDUCE_MAX, "
                   "REDUCE_MIN, RSQRT, SQUARED_DIFFERENCE; log 27 vs logs 34 and 37 and "
                   "edgetpu issue 193 for TRANSPOSE",
    "num segments": "guess from Coral's pipelining docs: the compiler cuts the model into N "
                    "segments of about equal parameter data",
}
