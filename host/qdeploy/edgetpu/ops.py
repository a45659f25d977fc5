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
# (log 27), mapped under 16 (log 34). The others are rows of Coral's current table
# (runtime-14 column, read from the copy of the table published for Axis ARTPEC-7, which
# uses the Edge TPU); no log shows compiler 15 on them, so the preflight assumes 16 only.
ADDED_IN_16 = frozenset({"TRANSPOSE", "PRELU", "REDUCE_MAX", "REDUCE_MIN", "RSQRT",
                         "SQUARED_DIFFERENCE"})

# Coral's table, row by row (compiler 16), and what the preflight does with each caveat
# (`qdeploy.edgetpu.preflight.LIMITS`). A caveat the preflight cannot check from the
# flatbuffer alone is marked "not checked".
CORAL_TABLE = {
    "ADD": "", "AVERAGE_POOL_2D": "no fused activation",
    "CONCATENATION": "no fused activation; a constant input only with exactly 2 inputs, "
                     "all zeros; large tensors refused (JOIN_MAX_DIM, log 35)",
    "CONV_2D": "same dilation in x and y", "DEPTHWISE_CONV_2D": "same dilation in x and y",
    "EXPAND_DIMS": "", "FULLY_CONNECTED": "default weights format; 1-D output",
    "L2_NORMALIZATION": "", "LOGISTIC": "", "UNIDIRECTIONAL_SEQUENCE_LSTM": "unidirectional only",
    "MAXIMUM": "", "MAX_POOL_2D": "no fused activation",
    "MEAN": "no reduction along batch; a z-reduction needs z a multiple of 4 (compiler 16; "
            "older tables: x and/or y only)",
    "MINIMUM": "", "MUL": "", "PACK": "not along batch",
    "PAD": "not along batch (compiler 15 and 16, log 36; the 2019 table: x and/or y only)",
    "PRELU": "alpha 1-D (only the innermost dimension > 1): Keras PReLU(shared_axes=[1, 2])",
    "QUANTIZE": "large tensors refused (JOIN_MAX_DIM, log 35)", "REDUCE_MAX": "not along batch", "REDUCE_MIN": "not along batch",
    "RELU": "", "RELU6": "", "RELU_N1_TO_1": "",
    "RESHAPE": "certain reshapes are not mapped for large tensor sizes (RESHAPE_MAX_DIM)",
    "RESIZE_BILINEAR": "3-D input/output; may stay on the CPU to avoid precision loss",
    "RESIZE_NEAREST_NEIGHBOR": "3-D input/output; may stay on the CPU to avoid precision "
                               "loss (not checked: no twin or log shows it refused)",
    "RSQRT": "", "SLICE": "", "SOFTMAX": "1-D input, at most 16,000 elements",
    "SPACE_TO_DEPTH": "", "SPLIT": "not along batch", "SQUARED_DIFFERENCE": "",
    "SQUEEZE": "no relayout (leading 1s only)",
    "STRIDED_SLICE": "strides 1, ellipsis mask 0, new-axis mask 0", "SUB": "",
    "SUM": "as MEAN", "TANH": "", "TRANSPOSE": "by size under compiler 16 "
                                             "(TRANSPOSE_MAPPED_UP_TO, log 34)",
    "TRANSPOSE_CONV": "",
}

# Size limits, each bracketed by real compiles. Between the last size seen mapped and the
# first seen refused the preflight predicts refused and says "likely" in the verdict.
# TRANSPOSE (compiler 16, log 34, an Ultralytics YOLOv8n at 320: 2 mapped, 3 refused): the
# head's per-level transposes of the 64-channel box map at 1x10x10x64 and 1x20x20x64 and
# the one at 1x40x40x64 is refused (the export as the issue describes it; the log itself
# gives only the counts). The shapes of the other two refused ones the log does not show.
TRANSPOSE_MAPPED_UP_TO = 20 * 20 * 64  # elements
TRANSPOSE_REFUSED_FROM = 40 * 40 * 64
TRANSPOSE_BRACKET = ("mapped at 1x20x20x64 (25,600 elements), refused at 1x40x40x64 "
                     "(102,400) in a YOLOv8n export at 320 (log 34)")
# RESHAPE (compiler 16, log 35, a YOLOv5n at 640, and log 06, a YOLOv5s): per grid the
# head reshapes [1,g,g,255] -> [1,g*g,3,85] -> [1,3*g*g,85]. All LOGISTIC ops behind the
# first reshapes are mapped, so the 3 refused reshapes are those with a dimension of
# 4800 or more (80x80: 6400 and 19200; 40x40: [1,1600,3,85] -> [1,4800,85]) and the 3
# mapped ones have none above 1600. Coral's movenet twin maps [1,48,48,1] -> [1,2304,1]:
# the limit lies between 2304 and 4800, which no log or twin pins down.
RESHAPE_MAX_DIM = 2304
RESHAPE_REFUSED_DIM = 4800
RESHAPE_BRACKET = ("mapped with dimensions up to 2304 ([1,48,48,1] -> [1,2304,1], twin "
                   "movenet_single_pose_lightning_ptq), refused from 4800 ([1,1600,3,85] -> "
                   "[1,4800,85] in a YOLOv5n export at 640, log 35)")
# CONCATENATION and QUANTIZE (compiler 16, logs 35 and 06, YOLOv5n/s at 640): the head's
# last CONCATENATION [1,25200,85] and the output QUANTIZE of that tensor are 'unspecified
# limitation'; the concatenation of the cut 80x80 level, [1,6400,3,85], is 'More than one
# subgraph', i.e. mappable on its own. Between 6400 and 25200 no log decides.
JOIN_MAX_DIM = 6400
JOIN_REFUSED_DIM = 25200
JOIN_BRACKET = ("mappable with a dimension of 6400 ([1,6400,3,85]), refused at 25200 "
                "([1,25200,85], the last concatenation and output QUANTIZE of a YOLOv5n "
                "export at 640, log 35)")
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
    "transpose size": "log 34 (compiler 16, YOLOv8n at 320: TRANSPOSE 2 mapped, 3 "
                      "'unspecified limitation'): " + TRANSPOSE_BRACKET + "; the log gives "
                      "counts only: the grids and the 64 channels are the issue's reading of "
                      "the export (were the per-level maps the 144-channel box+class "
                      "concatenation, the bracket would be 57,600 to 230,400)",
    "reshape size": "twin movenet_single_pose_lightning_ptq and logs 35 and 06 (compiler 16, YOLOv5n at 640 and YOLOv5s: RESHAPE 3 "
                    "mapped, 3 'unspecified limitation'): " + RESHAPE_BRACKET,
    "join size": "logs 35 and 06 (compiler 16, YOLOv5n and YOLOv5s at 640: CONCATENATION "
                 "and QUANTIZE one each 'unspecified limitation'): " + JOIN_BRACKET,
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
    "softmax": "docs (1-D input, at most 16,000 elements); log 24",
    "fused activation": "docs (pooling and concatenation without fused activation)",
    "concatenation constant": "docs (a constant input only with 2 inputs, all zeros)",
    "fully connected": "docs (default weights format, 1-D output); log 24",
    "squeeze": "docs (no relayout)",
    "strided slice": "docs (strides 1, no ellipsis or new-axis mask)",
    "added in 16": "docs (Coral's current table, runtime 14) for PRELU, REDUCE_MAX, "
                   "REDUCE_MIN, RSQRT, SQUARED_DIFFERENCE; log 27 vs log 34 for TRANSPOSE",
    "num segments": "guess from Coral's pipelining docs: the compiler cuts the model into N "
                    "segments of about equal parameter data",
}
