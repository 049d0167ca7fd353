"""FP16 pre-flight: exact normalisation, the overflow scan, and the repair search."""
