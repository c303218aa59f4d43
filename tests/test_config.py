import pytest
import yaml

from mammo.config import Config, load_config, parse_overrides, save_config
from mammo.errors import ConfigError


def test_default_config_loads_and_is_frozen():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.detector.classes == ("lesion",)
    with pytest.raises(Exception):
        cfg.detector.imgsz = 1  # frozen


@pytest.mark.parametrize("name", ["mias", "cbis-ddsm", "inbreast", "vindr", "csv"])
def test_dataset_configs_inherit_default(name):
    cfg = load_config(f"configs/{name}.yaml")
    assert cfg.data.format == name
    assert cfg.detector == load_config().detector  # only the data (and preprocess) sections differ


def test_overrides_parse_types():
    cfg = load_config(overrides=["detector.imgsz=320", "classifier.learning_rate=1e-4", "run.device=0",
                                 "detector.classes=[mass,calcification]", "pipeline.threshold=null"])
    assert cfg.detector.imgsz == 320
    assert cfg.classifier.learning_rate == pytest.approx(1e-4)
    assert cfg.run.device == "0"
    assert cfg.detector.classes == ("mass", "calcification")
    assert cfg.pipeline.threshold is None


@pytest.mark.parametrize("override,needle", [
    (["detector.imgsz=big"], "detector.imgsz"),
    (["detector.imgsize=320"], "did you mean 'imgsz'"),
    (["nosuchsection.x=1"], "nosuchsection"),
    (["classifier.class_weight=3"], "classifier.class_weight"),
    (["detector"], "key=value"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(overrides=override)


def test_unknown_key_in_file_is_an_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("detector:\n  imgzs: 320\n")
    with pytest.raises(ConfigError, match="detector.imgzs"):
        load_config(p)


def test_inherit_and_save_round_trip(tmp_path):
    parent = tmp_path / "base.yaml"
    parent.write_text("detector:\n  imgsz: 256\n  epochs: 3\n")
    child = tmp_path / "child.yaml"
    child.write_text("inherit: base.yaml\ndetector:\n  epochs: 5\n")
    cfg = load_config(child)
    assert (cfg.detector.imgsz, cfg.detector.epochs) == (256, 5)
    saved = save_config(cfg, tmp_path / "run")
    assert load_config(saved) == cfg
    assert yaml.safe_load(saved.read_text())["detector"]["classes"] == ["lesion"]


def test_parse_overrides_nests():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}
