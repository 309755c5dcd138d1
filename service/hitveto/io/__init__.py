"""Detectors and files through psana: geometry, xtc2, runs as events, peakfinder8."""
