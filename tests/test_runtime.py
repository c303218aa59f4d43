"""The runtime module makes the process safe and offline. Each check runs in a fresh interpreter, because
import order and network hooks are per-process facts."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from netguard import BLOCK_NETWORK, TINY_YOLO_DATASET

REPO = Path(__file__).resolve().parent.parent

# Predicting with YOLO loads triton; with TensorFlow imported first that used to kill the process (exit 139).
YOLO_PREDICT = "from ultralytics import YOLO; import numpy as np; " \
               "YOLO('yolov8n.yaml').predict(np.zeros((64, 64, 3), np.uint8), verbose=False)"
KERAS_BUILD = "import keras; keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3)])"
STAGE_ORDERS = [
    ["import tensorflow", YOLO_PREDICT],
    [YOLO_PREDICT, KERAS_BUILD],
    ["import keras", "import torchvision", YOLO_PREDICT],
]


def run_python(code: str, tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "MAMMO_RUN_DIR": str(tmp_path / "runs"), "HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("statements", STAGE_ORDERS, ids=["tf-then-yolo", "yolo-then-keras", "keras-tv-yolo"])
def test_frameworks_import_in_any_order(statements, tmp_path):
    code = "import mammo.runtime\n" + "\n".join(statements) + "\nprint('survived')"
    result = run_python(code, tmp_path)
    assert result.returncode == 0 and "survived" in result.stdout, result.stderr[-2000:]


def test_stage_modules_import_in_either_order(tmp_path):
    stages = [m for m in ("detector.model", "classifier.model") if (REPO / (m.replace(".", "/") + ".py")).exists()]
    if len(stages) < 2:
        pytest.skip("detector.model and classifier.model are not both present yet")
    for order in (stages, stages[::-1]):
        code = "import mammo.runtime\n" + "\n".join(f"import {m}" for m in order) + f"\n{YOLO_PREDICT}\nprint('ok')"
        result = run_python(code, tmp_path)
        assert result.returncode == 0 and "ok" in result.stdout, (order, result.stderr[-2000:])


NETWORK_PROBE = BLOCK_NETWORK + TINY_YOLO_DATASET + textwrap.dedent('''

    mammo.runtime.configure_ultralytics()
    from ultralytics import YOLO
    YOLO("yolov8n.yaml").train(data=str(root / "data.yaml"), epochs=1, imgsz=64, batch=4, workers=0, amp=False,
                               plots=False, device="cpu", project=str(root / "runs"), name="t", verbose=False)
    import keras
    keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 1), classes=2)
    print("ATTEMPTS=" + json.dumps(attempts))
''')


def test_no_network_during_yolo_train_and_keras_build(tmp_path):
    result = run_python(NETWORK_PROBE.replace("{root}", str(tmp_path / "ds")), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("ATTEMPTS=")][-1]
    assert json.loads(line[len("ATTEMPTS="):]) == []
    assert not (tmp_path / "home").exists(), "nothing may be written to the home folder"
