import re

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


# --- one schema, checked at load (issue 14 item 1) ------------------------------------------------------------
import dataclasses  # noqa: E402
import json  # noqa: E402
import typing  # noqa: E402

from mammo.config import DEFAULT_CONFIG, check_setting, choices, to_dict  # noqa: E402


def _settings():
    """(dotted key, field) of every setting."""
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory):
            yield f"{section.name}.{f.name}", f


def test_default_yaml_and_dataclasses_are_equal_both_ways():
    """configs/default.yaml repeats every default: same keys (none missing on either side), same values."""
    assert yaml.safe_load(DEFAULT_CONFIG.read_text()) == to_dict(Config())


# The cases and the size-like settings that could take the machine down (tile_size=0 grew to 24 GB).
@pytest.mark.parametrize("override,needle", [
    ("pipeline.aggregate=mean", "choose one of max, max_product, noisy_or, noisy_or_product, stacker"),
    ("pipeline.threshold=nan", "finite"),
    ("pipeline.threshold=.inf", "finite"),
    ("pipeline.threshold=1.5", "allowed 0.0 to 1.0"),
    ("preprocess.crop_margin=-100", "allowed 0 to"),
    ("run.threads=-1", "allowed 1 to"),
    ("run.device=banana", "cpu, mps, cuda"),
    ("run.name=", "must not be empty"),
    ("run.name='  '", "must not be empty"),
    ("detector.model=", "must not be empty"),
    ("detector.classes=[mass, '']", "must not be empty"),
    ("detector.mode=tilted", "letterbox, tiled"),
    ("detector.tile_size=0", "allowed 32 to"),
    ("detector.tile_overlap=1.0", "allowed 0.0 to 0.9"),
    ("detector.tile_scale=0", "allowed"),
    ("detector.imgsz=100000", "allowed 32 to"),
    ("detector.batch=0", "allowed 1 to"),
    ("detector.epochs=0", "allowed 1 to"),
    ("detector.max_det=0", "allowed 1 to"),
    ("detector.conf=-0.1", "allowed 0.0 to 1.0"),
    ("classifier.backbone=resnet", "small_cnn, mobilenet_v2"),
    ("classifier.head=mlp", "gap, dense"),
    ("classifier.optimizer=rmsprop", "adam, sgd"),
    ("classifier.calibration=beta", "temperature"),
    ("classifier.channels=2", "1, 3"),
    ("classifier.input_size=0", "allowed 16 to"),
    ("classifier.crops_per_lesion=0", "allowed 1 to"),
    ("classifier.crops_per_lesion=100000", "allowed 1 to"),
    ("classifier.learning_rate=nan", "finite"),
    ("pipeline.heatmap_downscale=0", "allowed 1 to"),
    ("pipeline.image_id=names", "auto, name, hash"),
    ("pipeline.bootstrap=0", "allowed 1 to"),
    ("data.format=dicom", "mias, cbis-ddsm"),
    ("data.split_fractions={train: 0.8, val: -0.2}", "data.split_fractions.val"),
    ("tuning.metric=accuracy", "aupr, auroc, fbeta"),
    ("tuning.pruner=sha", "median, hyperband, none"),
    ("tuning.workers=0", "allowed 1 to"),
    ("tuning.timeout=-5", "allowed"),
])
def test_bad_value_is_one_error_naming_the_key_and_what_is_allowed(override, needle):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=re.escape(needle)) as err:
        load_config(overrides=[override])
    assert str(err.value).startswith(key.split("{")[0])


def _bad_values(key, f, hint):
    """Values the schema must refuse for one field, derived from its declaration (so new fields are covered)."""
    if typing.get_origin(hint) is typing.Literal:
        yield "no-such-choice"
    low_high = f.metadata.get("range")
    if low_high:
        low, high = low_high
        yield low - (1 if isinstance(low, int) else 0.001)
        yield high + (1 if isinstance(high, int) else 0.001)
    if float in (hint, *typing.get_args(hint)):
        yield float("nan")
        yield float("inf")
    if hint is str and not f.metadata.get("empty_ok", False):
        yield ""


def _schema_cases():
    hints = {k: typing.get_type_hints(type(getattr(Config(), k.split(".")[0])))[k.split(".")[1]] for k, _ in
             _settings()}
    return [pytest.param(key, v, id=f"{key}={v!r}") for key, f in _settings() for v in _bad_values(key, f, hints[key])]


@pytest.mark.parametrize("key,value", _schema_cases())
def test_every_declared_bound_and_choice_is_enforced(key, value):
    """Generated from the schema: every Literal refuses an unknown choice, every range both of its ends,
    every float NaN and inf, every non-optional string ''. Through a YAML file too (not just overrides)."""
    with pytest.raises(ConfigError, match=re.escape(key)):
        check_setting(key, value)
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=re.escape(key)):
        dataclasses.replace(getattr(Config(), section), **{name: value})  # no path builds a bad config


def test_every_size_like_setting_is_bounded():
    """Every int setting except flags and seeds declares a range (a size of 0 or 10**9 is refused)."""
    unbounded = [key for key, f in _settings() if f.type in ("int", "float", "float | None")
                 and "range" not in f.metadata]
    assert unbounded == []


def test_bad_value_in_a_config_file_names_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("inherit: " + str(DEFAULT_CONFIG) + "\ndetector:\n  mode: tiled\n  tile_size: 0\n")
    with pytest.raises(ConfigError, match=r"detector\.tile_size: 0 is out of range"):
        load_config(p)


def test_a_field_name_without_its_section_suggests_the_dotted_key():
    with pytest.raises(ConfigError, match="did you mean 'detector.imgsz'"):
        load_config(overrides=["imgsz=320"])


def test_good_values_at_the_bounds_load():
    cfg = load_config(overrides=["detector.tile_size=32", "detector.tile_overlap=0", "run.device=cuda:1",
                                 "run.device=0,1", "pipeline.aggregate=noisy_or", "pipeline.threshold=0",
                                 "classifier.channels=3", "tuning.timeout=60"])
    assert (cfg.detector.tile_size, cfg.run.device, cfg.classifier.channels) == (32, "0,1", 3)
    assert choices("pipeline.aggregate") == ("max", "max_product", "noisy_or", "noisy_or_product", "stacker")


@pytest.mark.parametrize("module,argv", [
    ("pipeline", ["infer", "x.dcm", "--out", "{out}", "pipeline.aggregate=mean"]),
    ("pipeline", ["infer", "--out", "{out}", "pipeline.threshold=nan"]),
    ("pipeline", ["export-rois", "--out", "{out}", "preprocess.crop_margin=-100"]),
    ("detector", ["predict", "--weights", "w.pt", "--out", "{out}", "x.dcm", "detector.tile_size=0"]),
    ("classifier", ["train", "--out", "{out}", "run.threads=-1"]),
    ("classifier", ["predict", "--crops", "a.png", "--out", "{out}", "run.device=banana"]),
    ("tuning", ["run", "--study", "s", "--out", "{out}", "--trainer", "toy", "tuning.pruner=sha"]),
])
def test_cli_bad_setting_is_exit_2_one_error_line_and_no_output_folder(module, argv, tmp_path, capsys):
    import importlib

    out = tmp_path / "out"
    main = importlib.import_module(f"{module}.__main__").main
    assert main([a.replace("{out}", str(out)) for a in argv]) == 2
    err = capsys.readouterr().err
    key = argv[-1].split("=")[0]
    assert err.startswith(f"error: {key}: ") and "Traceback" not in err and err.count("\n") == 1, err
    assert not out.exists()


def test_nan_never_reaches_json(tmp_path):
    """The config refuses NaN (above); a NaN score from a model is a failed row, never written as `NaN`."""
    from pipeline.results import ImageResult, write_result

    with pytest.raises(ValueError):
        write_result(tmp_path, ImageResult("a", "a.png", 4, 4, float("nan"), 0.5, "malignant"))
    assert not list(tmp_path.iterdir())
    path = write_result(tmp_path, ImageResult("b", "b.png", 4, 4, 0.25, 0.5, "not malignant"))
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def test_tuning_space_values_go_through_the_config_checks():
    from tuning.space import apply_overrides, parse_space

    with pytest.raises(ConfigError, match=r"classifier.dropout: 0.99 is out of range"):
        parse_space({"parameters": {"classifier.dropout": {"type": "float", "low": 0.1, "high": 0.99}}})
    with pytest.raises(ConfigError, match=r"classifier.head: 'mlp' is not allowed"):
        parse_space({"parameters": {"classifier.head": {"type": "categorical", "choices": ["gap", "mlp"]}}})
    with pytest.raises(ConfigError, match=r"classifier.input_size: 0 is out of range"):
        apply_overrides(Config(), {"classifier.input_size": 0})
    assert apply_overrides(Config(), {"classifier.dropout": 0}).classifier.dropout == 0.0
