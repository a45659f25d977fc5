"""qrun: the device side of qdeploy.

Runs quantized and Edge TPU-compiled TFLite models on a Raspberry Pi (or any
machine) with only numpy, pillow, typer and a TFLite runtime installed. It never
imports TensorFlow or paramiko.
"""

__version__ = "0.1.0"
