"""Encoder–decoder (seq2seq) model families: greedy generation on onnxruntime."""
