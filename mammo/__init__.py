"""Shared layer of the mammography CAD toolkit: reading images and annotations, geometry, configs, runtime.

Imports no deep-learning framework: reading a DICOM or computing a metric never loads torch or TensorFlow.
"""

from pathlib import Path as _Path

_HERE = _Path(__file__).resolve().parent
# Where configs/ and weights/ live: beside the packages in a source checkout; inside mammo/ after `pip install .`
# (pyproject.toml copies them there). Runs go under it in a checkout, under the working folder once installed.
INSTALLED = not (_HERE.parent / "configs" / "default.yaml").is_file()
PROJECT_ROOT = _HERE if INSTALLED else _HERE.parent
