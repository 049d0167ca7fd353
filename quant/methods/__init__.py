"""Methods build a variant's model file; each module registers one method."""

from quant.methods import dynamic_int8, fp16, inc, static_int8, weight_only  # noqa: F401
