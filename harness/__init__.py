"""sdsat-bench: evaluation and benchmarking harness for SDSAT speculative decoding."""

__version__ = "0.1.0"
