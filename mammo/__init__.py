"""Shared layer of the mammography CAD toolkit: reading images and annotations, geometry, configs, runtime.

Imports no deep-learning framework: reading a DICOM or computing a metric never loads torch or TensorFlow.
"""
