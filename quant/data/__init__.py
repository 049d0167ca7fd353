"""The data layer calibration and evaluation share: sample sources, image transforms, feeds checked against the model."""
