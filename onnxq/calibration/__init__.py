"""Calibration: streaming observers, the calibration pass, and the ranges file."""
