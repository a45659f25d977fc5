"""The Edge TPU compiler: its driver and log parser, the op table, the offline preflight."""
