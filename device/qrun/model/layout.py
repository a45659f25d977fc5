"""Where deployments live and what they hold: the home, manifest.json, artifact roles.

A device keeps its deployments under ``$QDEPLOY_HOME`` (default ``~/qdeploy``), the
one in use at ``current``. A deployment directory holds `manifest.json`, which lists
each file by role. The three model roles are also the variants that `qrun bench`,
`qrun verify` and the reports name. `qdeploy convert` gives each role's file a fixed
name, by which a directory without a manifest is still read.

Only constants, no imports: `qrun --help` and classifying a bare model file use these
names without loading the manifest module (qrun.model.manifest re-exports them).
"""

HOME_ENV = "QDEPLOY_HOME"
DEFAULT_HOME = "~/qdeploy"
CURRENT = "current"  # the deployment in use, under the home
MANIFEST_NAME = "manifest.json"

# Artifact roles: the keys of `Manifest.artifacts`.
FLOAT = "float"  # the source model converted without quantization
INT8 = "int8"  # the full-integer CPU model (the compiled twin's source)
EDGETPU = "edgetpu"  # the Edge TPU compiled twin of the int8 model
LABELS = "labels"
REFERENCE = "reference"  # reference_inputs.npy for verify
MODEL_ROLES = (FLOAT, INT8, EDGETPU)

# The file `qdeploy convert` writes for each role (compile adds <int8 stem>_edgetpu.tflite).
CONVERT_FILES = {
    FLOAT: "model_float.tflite",
    INT8: "model_int8.tflite",
    LABELS: "labels.txt",
    REFERENCE: "reference_inputs.npy",
}
