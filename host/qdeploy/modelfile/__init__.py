"""The bottom floor: reading a `.tflite` file (tflite_graph: ops, tensors, quantization;
selfdescribe: signature, TFLITE_METADATA, Ultralytics' temp_meta.txt) and the task its
outputs point to (tasks, by qrun.tasks.roles). Every stage may import it; it imports no
stage."""
