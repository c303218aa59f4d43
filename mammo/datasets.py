"""From a config's data section to annotated images split by patient: the one way every stage gets its data."""
from __future__ import annotations

from pathlib import Path

from mammo.annotations import AnnotationSet, read_annotations
from mammo.config import DataConfig
from mammo.records import ImageRecord
from mammo.splits import apply_split_file, split_by_patient, write_split_file


def load_split_dataset(data: DataConfig, run_dir=None) -> tuple[AnnotationSet, dict[str, tuple[ImageRecord, ...]]]:
    """Read the annotations and split them by patient (from `data.split_file` when given, so that every stage
    uses the same split). With `run_dir`, the split is saved there as split.csv, next to the run's outputs."""
    options = {"aspect_squashed": True} if data.aspect_squashed else {}
    annotations = read_annotations(data.format, data.annotations, data.images_root or None, **options)
    if data.split_file:
        splits = apply_split_file(annotations.images, data.split_file)
    else:
        splits = split_by_patient(annotations.images, dict(data.split_fractions), data.seed)
    if run_dir is not None:
        write_split_file(Path(run_dir) / "split.csv", splits)
    return annotations, splits
