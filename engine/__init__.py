"""Training/evaluation machinery: loops, distributed helpers, checkpoint I/O, optimisers."""
