"""Capture: the host side shared by every framework (`host`) and each
framework's device side (`tf_*`, `keras_layers`, `torch_*`)."""
