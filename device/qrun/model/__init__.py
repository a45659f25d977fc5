"""The model and its runtime: the TFLite interpreter and the Edge TPU delegate (runtime,
delegate_probe), what a deployment holds (layout, manifest, deployment), its tensors and
their quantization (tensors, preprocess), seeded random inputs for them (inputs), its
labels."""
