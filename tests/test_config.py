"""The run config: sections owned by components, short and sectioned keys, YAML base chains,
checked values with one-line errors, the saved configs of older runs, main.py's errors."""
import dataclasses
import os

import pytest

from stag4d import config as run_config
from stag4d.config import RunConfig, config_from_dict, load_config, saved_run_config
from stag4d.settings import ConfigError, check_settings
from stag4d.training import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def config_file(name):
    return os.path.join(CONFIGS, name)


def test_faithful_values_of_the_spec():
    cfg = load_config(config_file("stag4d.yaml"), ["path=dataset/minions"])
    assert (cfg.model.num_pts, cfg.model.init_radius, cfg.camera.radius, cfg.camera.fovy) == (10000, 0.5, 2.0, 49.1)
    assert (cfg.data.ref_size, cfg.train.batch_size, cfg.train.iters, cfg.train.init_steps) == (512, 4, 2000, 700)
    assert (cfg.output.save_step, cfg.output.keep_last) == (1000, 2)  # ours: the released run saves at 8000 only
    assert (cfg.output.valid_interval, cfg.train.invert_bg_prob) == (500, 0.5)
    loss = cfg.loss
    assert (loss.lambda_ref_rgb, loss.lambda_ref_alpha, loss.lambda_zero123, loss.lambda_tv) == (20000, 5000, 1, 1)
    assert loss.scale_loss_ratio == 7.5 and cfg.guidance.guidance_scale == 5
    assert loss.lambda_anchor_rgb == 0 and loss.lambda_anchor_alpha == 0
    assert cfg.guidance.zero123_model == "ashawkey/zero123-xl-diffusers"
    assert cfg.camera.anchor_views[:2] == [[30, -30], [90, 20]]
    assert cfg.train.render_res_sizes == [128, 256, 512] and cfg.train.render_res_ratios == [0.3, 0.6]
    densify = cfg.densify
    assert (densify.density_start_iter, densify.density_end_iter, densify.densification_interval) == (1200, 6000, 100)
    assert cfg.deformation.time_mapping == "full" and cfg.deformation.kplanes_resolution == [64, 64, 64, 25]
    assert cfg.output.save_path == "minions"  # defaults to the dataset folder's name


def test_values_are_typed_python_objects():
    cfg = load_config(config_file("stag4d.yaml"), ["path=x", "holdout_views=[1,3]"])
    assert isinstance(cfg, RunConfig) and type(cfg.data.holdout_views) is list
    assert type(cfg.train.iters) is int and type(cfg.optim.adam_eps) is float


def test_short_and_sectioned_overrides_are_the_same_setting():
    short = load_config(config_file("stag4d.yaml"), ["path=x", "num_pts=123", "holdout_frames=[0]"])
    full = load_config(config_file("stag4d.yaml"), ["data.path=x", "model.num_pts=123", "data.holdout_frames=[0]"])
    assert short == full and short.model.num_pts == 123


def test_dotted_overrides_parse_lists_and_numbers():
    cfg = load_config(
        config_file("stag4d.yaml"),
        ["path=dataset/x", "save_path=run1", "holdout_views=[1,3]", "holdout_frames=[0]", "batch_size=2",
         "lambda_zero123=0", "anchor_views=[[0,0],[90,0],[180,0],[270,0]]", "load_path=run0", "load_step=400"],
    )
    assert cfg.data.holdout_views == [1, 3] and cfg.data.holdout_frames == [0]
    assert cfg.train.batch_size == 2 and cfg.loss.lambda_zero123 == 0.0 and cfg.output.save_path == "run1"
    assert cfg.camera.anchor_views[2] == [180.0, 0.0]
    assert cfg.train.load_path == "run0" and cfg.train.load_step == 400


def test_setting_names_are_unique_across_sections():
    names = [f.name for cls in run_config.SECTIONS.values() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)) == len(run_config.KNOWN_KEYS)
    assert not set(names) & set(run_config.SECTIONS)


def test_every_setting_has_help_text():
    missing = [f"{section}.{f.name}" for section, cls in run_config.SECTIONS.items() for f in dataclasses.fields(cls)
               if not f.metadata.get("help")]
    assert missing == []


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown setting 'batchsize' in the command line; did you mean 'batch_size'\?"):
        load_config(config_file("stag4d.yaml"), ["path=x", "batchsize=3"])
    with pytest.raises(ConfigError, match="did you mean 'lambda_zero123'"):
        load_config(config_file("stag4d.yaml"), ["path=x", "lambda_zero12=0"])
    with pytest.raises(ConfigError, match="did you mean 'model.num_pts'"):
        load_config(config_file("stag4d.yaml"), ["path=x", "model.num_ptz=3"])


def test_removed_keys_say_so_in_one_line():
    with pytest.raises(ConfigError) as info:
        load_config(config_file("stag4d.yaml"), ["path=x", "fuse_renders=true"])
    assert "fuse_renders" in str(info.value) and "removed" in str(info.value) and "\n" not in str(info.value)


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: %s\nref_sise: 128\n" % config_file("stag4d.yaml"))
    with pytest.raises(ConfigError) as info:
        load_config(str(bad), ["path=x"])
    message = str(info.value)
    assert "ref_sise" in message and str(bad) in message and "'ref_size'" in message
    assert "\n" not in message


def test_yaml_files_may_use_sections_or_flat_keys(tmp_path):
    sectioned = tmp_path / "sectioned.yaml"
    sectioned.write_text("model:\n  num_pts: 77\ntrain:\n  batch_size: 3\n")
    flat = tmp_path / "flat.yaml"
    flat.write_text("num_pts: 77\nbatch_size: 3\n")
    assert load_config(str(sectioned), ["path=x"]) == load_config(str(flat), ["path=x"])
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("model:\n  batch_size: 3\n")
    with pytest.raises(ConfigError, match="model.batch_size"):
        load_config(str(wrong), ["path=x"])


@pytest.mark.parametrize("overrides, word", [
    (["batch_size=abc"], "batch_size"),
    (["holdout_views=[7]"], "holdout_views"),
    (["backend=cuda"], "backend"),
    (["batch_size=0"], "batch_size"),
    (["render_res_sizes=[128]"], "render_res_sizes"),
    (["invert_bg_prob=2"], "invert_bg_prob"),
    (["time_mapping=quarter"], "time_mapping"),
    (["load_step=3"], "load_path"),
    (["batch_size"], "key=value"),
    (["fovy=0"], "fovy"),
    (["fovy=180"], "fovy"),
    (["radius=0"], "radius"),
    (["radius=nan"], "radius"),
    (["position_lr_init=-1"], "position_lr_init"),
    (["feature_lr=nan"], "feature_lr"),
    (["adam_eps=0"], "adam_eps"),
    (["init_radius=nan"], "init_radius"),
    (["lambda_ref_rgb=inf"], "lambda_ref_rgb"),
    (["seed=-1"], "seed"),
    (["kplanes_resolution=[64,32,64,25]"], "kplanes_resolution"),
    (["min_step_start=0.9", "max_step_start=0.5"], "min_step_start"),
    (["device=tpu"], "device"),
])
def test_wrong_type_and_bad_values_are_one_line(overrides, word):
    with pytest.raises(ConfigError) as info:
        load_config(config_file("stag4d.yaml"), ["path=x"] + overrides)
    assert word in str(info.value) and "\n" not in str(info.value), (overrides, str(info.value))


def test_missing_path_says_how_to_set_it():
    with pytest.raises(ConfigError, match="path=dataset/NAME"):
        load_config(config_file("stag4d.yaml"), [])


def test_missing_config_file_and_base_chain(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"), ["path=x"])
    child = tmp_path / "child.yaml"
    child.write_text("base: %s\nbatch_size: 2\nref_size: 64\n" % config_file("stag4d.yaml"))
    cfg = load_config(str(child), ["path=x", "ref_size=32"])
    assert cfg.train.batch_size == 2 and cfg.data.ref_size == 32 and cfg.train.iters == 2000  # child, CLI, default
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(str(loop), ["path=x"])


@pytest.mark.parametrize("name", ["stag4d.yaml", "anchored.yaml", "demo.yaml"])
def test_every_shipped_config_loads(name):
    cfg = load_config(config_file(name), ["path=dataset/demo"])
    assert cfg.data.path == "dataset/demo"


def test_anchored_config_needs_no_diffusion_model():
    cfg = load_config(config_file("anchored.yaml"), ["path=dataset/x"])
    assert cfg.loss.lambda_zero123 == 0
    assert cfg.loss.lambda_anchor_rgb > 0 and cfg.loss.lambda_anchor_alpha > 0
    assert cfg.loss.lambda_ref_rgb == 20000  # everything else inherited from stag4d.yaml


def test_config_from_dict_checks():
    cfg = config_from_dict({"path": "data/abc", "batch_size": 1})
    assert cfg.output.save_path == "abc" and cfg.train.batch_size == 1
    with pytest.raises(ConfigError, match="did you mean 'num_pts'"):
        config_from_dict({"path": "x", "num_pt": 1})


def test_component_configs_check_themselves():
    cfg = config_from_dict({"path": "x"})
    cfg.model.num_pts = 0
    with pytest.raises(ConfigError, match="num_pts=0 must be >= 1"):
        check_settings(cfg)


@pytest.mark.parametrize("value, front_end", [
    ("web", "web"), ("dearpygui", "dearpygui"), ("off", "off"), ("WEB", "web"),
    ("True", "dearpygui"), ("true", "dearpygui"), ("False", "off"), ("false", "off"),  # the old boolean switch
])
def test_gui_names_a_front_end_and_the_old_booleans_still_work(value, front_end):
    assert load_config(config_file("stag4d.yaml"), ["path=x", f"gui={value}"]).viewer.gui == front_end


def test_gui_default_yaml_booleans_and_round_trip(tmp_path):
    assert load_config(config_file("stag4d.yaml"), ["path=x"]).viewer.gui == "off"
    for text, front_end in (("gui: true", "dearpygui"), ("gui: false", "off"), ("gui: web", "web")):
        path = tmp_path / "gui.yaml"
        path.write_text(f"base: {config_file('stag4d.yaml')}\n{text}\n")
        cfg = load_config(str(path), ["path=x"])
        assert cfg.viewer.gui == front_end
        saved = tmp_path / front_end
        saved.mkdir(exist_ok=True)
        (saved / "config.yaml").write_text(run_config.to_yaml(cfg))  # a saved run's config reads back the same
        assert saved_run_config(str(saved)).viewer.gui == front_end


@pytest.mark.parametrize("value", ["browser", "1", "viser"])
def test_gui_other_values_are_one_line_errors(value):
    with pytest.raises(ConfigError) as info:
        load_config(config_file("stag4d.yaml"), ["path=x", f"gui={value}"])
    message = str(info.value)
    assert "\n" not in message and "gui" in message and "web" in message and "dearpygui" in message, message


def test_viewer_port_range():
    assert load_config(config_file("stag4d.yaml"), ["path=x", "viewer_port=0"]).viewer.viewer_port == 0
    with pytest.raises(ConfigError, match="viewer_port=70000 must be in"):
        load_config(config_file("stag4d.yaml"), ["path=x", "viewer_port=70000"])


def test_saved_configs_of_both_layouts_load(tmp_path):
    """config.yaml of a new run (sectioned) and of an older one (flat, with since-removed keys)."""
    cfg = config_from_dict({"path": "data/abc", "num_pts": 42})
    new = tmp_path / "new"
    new.mkdir()
    (new / "config.yaml").write_text(run_config.to_yaml(cfg))
    assert saved_run_config(str(new)) == cfg
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text("path: data/abc\nsave_path: abc\nnum_pts: 42\nfuse_renders: false\n")
    assert saved_run_config(str(old)).model.num_pts == 42
    assert saved_run_config(str(tmp_path)) is None  # no config.yaml


def test_help_config_lists_every_key(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help-config"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    for key in run_config.KNOWN_KEYS:
        assert f"  {key}: " in out


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    return info.value.code, capsys.readouterr().err


def test_main_prints_one_line_errors(capsys):
    code, err = run_main(["--config", config_file("stag4d.yaml")], capsys)
    assert code == 2 and err.strip() == "error: no dataset given: add path=dataset/NAME (a folder with ref/<i>_rgba.png)"
    code, err = run_main(["--config", config_file("stag4d.yaml"), "path=x", "batchsize=3"], capsys)
    assert code == 2 and "did you mean 'batch_size'" in err and err.count("\n") == 1


def test_main_missing_dataset_is_one_line(capsys, tmp_path):
    code, err = run_main(["--config", config_file("stag4d.yaml"), f"path={tmp_path / 'missing'}",
                          "lambda_zero123=0", f"outdir={tmp_path / 'logs'}"], capsys)
    assert code == 2 and "missing" in err and err.count("\n") == 1
