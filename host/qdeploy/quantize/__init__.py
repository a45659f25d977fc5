"""Full-integer post-training quantization: the representative dataset, the converter, evaluation."""
