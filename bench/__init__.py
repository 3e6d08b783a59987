"""Inference measurement: speed, size and memory of the residual, BN-folded and plain forms
(`benchmark.py`), the tensor-lifetime memory meter and exports with an output check."""
