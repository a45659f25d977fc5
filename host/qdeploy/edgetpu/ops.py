"""What the Edge TPU compiler maps: its op support table, limits and status strings.

Data only, no logic: the preflight (`qdeploy.edgetpu.preflight`) applies these rules to a
model, and the compiler-output parser (`qdeploy.edgetpu.compiler_log`) recognises the same
status strings in real op tables. Sources: coral.ai's supported-operations table
(2019 copy plus later additions from the compiler's CHANGES.md), op tables of real
compiler runs, and google-coral/edgetpu issues (see ../shared/edgetpu-facts.md).
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
})

# Op versions compiler 16 cannot parse ("Didn't find op for builtin opcode 'X' version 'N'"
# then "Model could not be parsed"): op -> lowest rejected version.
REJECTED_VERSIONS = {
    "EXP": 2,             # libedgetpu issue 71 (TF 2.16)
    "TRANSPOSE_CONV": 4,  # issue 845
    "QUANTIZE": 3,        # issue 879
    "CONV_2D": 6,         # issue 631 (TF 2.9.1)
    "RSQRT": 2,           # issue 384
}

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
}

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
