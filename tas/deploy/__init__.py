"""Deployment: ONNX export with parity checks (:mod:`.export`), a run exported and timed against its
teacher (:mod:`.run`), and latency tables measured in the target runtime (:mod:`.latency`), which a
latency-budgeted search reads."""
