"""Config loading: YAML + base chains + dotted overrides, validation with one-line errors, main.py."""
import os
import sys

import pytest
from omegaconf import OmegaConf

import config_utils
from config_utils import ConfigError, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def config_file(name):
    return os.path.join(CONFIGS, name)


def test_stag4d_yaml_lists_every_key_with_the_schema_defaults():
    on_disk = OmegaConf.to_container(OmegaConf.load(config_file("stag4d.yaml")))
    schema = OmegaConf.to_container(config_utils.default_config())
    assert sorted(on_disk) == sorted(schema)
    differing = {k: (on_disk[k], schema[k]) for k in schema if on_disk[k] != schema[k]}
    assert differing == {}


def test_faithful_values_of_the_spec():
    cfg = load_config(config_file("stag4d.yaml"), ["path=dataset/minions"])
    assert (cfg.num_pts, cfg.init_radius, cfg.radius, cfg.fovy) == (10000, 0.5, 2.0, 49.1)
    assert (cfg.ref_size, cfg.batch_size, cfg.iters, cfg.init_steps) == (512, 4, 2000, 700)
    assert (cfg.save_step, cfg.valid_interval, cfg.invert_bg_prob) == (8000, 500, 0.5)
    assert (cfg.lambda_ref_rgb, cfg.lambda_ref_alpha, cfg.lambda_zero123, cfg.lambda_tv) == (20000, 5000, 1, 1)
    assert cfg.scale_loss_ratio == 7.5 and cfg.guidance_scale == 5
    assert cfg.lambda_anchor_rgb == 0 and cfg.lambda_anchor_alpha == 0
    assert cfg.zero123_model == "ashawkey/zero123-xl-diffusers"
    assert [list(r) for r in cfg.anchor_views][:2] == [[30, -30], [90, 20]]
    assert list(cfg.render_res_sizes) == [128, 256, 512] and list(cfg.render_res_ratios) == [0.3, 0.6]
    assert (cfg.density_start_iter, cfg.density_end_iter, cfg.densification_interval) == (1200, 6000, 100)
    assert cfg.save_path == "minions"  # defaults to the dataset folder's name


def test_dotted_overrides_parse_lists_and_numbers():
    cfg = load_config(
        config_file("stag4d.yaml"),
        ["path=dataset/x", "save_path=run1", "holdout_views=[1,3]", "holdout_frames=[0]", "batch_size=2",
         "lambda_zero123=0", "anchor_views=[[0,0],[90,0],[180,0],[270,0]]", "load_path=run0", "load_step=400"],
    )
    assert list(cfg.holdout_views) == [1, 3] and list(cfg.holdout_frames) == [0]
    assert cfg.batch_size == 2 and cfg.lambda_zero123 == 0.0 and cfg.save_path == "run1"
    assert [list(r) for r in cfg.anchor_views][2] == [180.0, 0.0]
    assert cfg.load_path == "run0" and cfg.load_step == 400


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown setting 'batchsize' in the command line; did you mean 'batch_size'\?"):
        load_config(config_file("stag4d.yaml"), ["path=x", "batchsize=3"])
    with pytest.raises(ConfigError, match="did you mean 'lambda_zero123'"):
        load_config(config_file("stag4d.yaml"), ["path=x", "lambda_zero12=0"])


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: %s\nref_sise: 128\n" % config_file("stag4d.yaml"))
    with pytest.raises(ConfigError) as info:
        load_config(str(bad), ["path=x"])
    message = str(info.value)
    assert "ref_sise" in message and str(bad) in message and "'ref_size'" in message
    assert "\n" not in message


def test_wrong_type_and_bad_values_are_one_line():
    cases = [
        (["path=x", "batch_size=abc"], "batch_size"),
        (["path=x", "holdout_views=[7]"], "holdout_views"),
        (["path=x", "backend=cuda"], "backend"),
        (["path=x", "batch_size=0"], "batch_size"),
        (["path=x", "render_res_sizes=[128]"], "render_res_sizes"),
        (["path=x", "invert_bg_prob=2"], "invert_bg_prob"),
        (["path=x", "time_mapping=quarter"], "time_mapping"),
        (["path=x", "load_step=3"], "load_path"),
        (["path=x", "batch_size"], "key=value"),
    ]
    for overrides, word in cases:
        with pytest.raises(ConfigError) as info:
            load_config(config_file("stag4d.yaml"), overrides)
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
    assert cfg.batch_size == 2 and cfg.ref_size == 32 and cfg.iters == 2000  # child, CLI, base
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(str(loop), ["path=x"])


@pytest.mark.parametrize("name", ["stag4d.yaml", "anchored.yaml", "demo.yaml"])
def test_every_shipped_config_loads(name):
    if not os.path.exists(config_file(name)):
        pytest.skip(f"{name} not written yet")
    cfg = load_config(config_file(name), ["path=dataset/demo"])
    assert cfg.path == "dataset/demo"


def test_anchored_config_needs_no_diffusion_model():
    cfg = load_config(config_file("anchored.yaml"), ["path=dataset/x"])
    assert cfg.lambda_zero123 == 0
    assert cfg.lambda_anchor_rgb > 0 and cfg.lambda_anchor_alpha > 0
    assert cfg.lambda_ref_rgb == 20000  # everything else inherited from stag4d.yaml


def test_config_from_dict_validates():
    cfg = config_utils.config_from_dict({"path": "data/abc", "batch_size": 1})
    assert cfg.save_path == "abc" and cfg.batch_size == 1
    with pytest.raises(ConfigError, match="did you mean 'num_pts'"):
        config_utils.config_from_dict({"path": "x", "num_pt": 1})


def run_main(argv, capsys):
    import main

    with pytest.raises(SystemExit) as info:
        main.main(argv)
    return info.value.code, capsys.readouterr().err


def test_main_prints_one_line_errors(capsys):
    code, err = run_main(["--config", config_file("stag4d.yaml")], capsys)
    assert code == 2 and err.strip() == "error: no dataset given: add path=dataset/NAME (a folder with ref/<i>_rgba.png)"
    code, err = run_main(["--config", config_file("stag4d.yaml"), "path=x", "batchsize=3"], capsys)
    assert code == 2 and "did you mean 'batch_size'" in err and err.count("\n") == 1


def test_main_gui_without_viewer_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "viewer", None)  # import viewer -> ModuleNotFoundError
    code, err = run_main(["--config", config_file("stag4d.yaml"), "path=x", "gui=True"], capsys)
    assert code == 2 and "viewer.py" in err and err.count("\n") == 1


def test_main_missing_dataset_is_one_line(capsys, tmp_path):
    code, err = run_main(["--config", config_file("stag4d.yaml"), f"path={tmp_path / 'missing'}",
                          "lambda_zero123=0", f"outdir={tmp_path / 'logs'}"], capsys)
    assert code == 2 and "missing" in err and err.count("\n") == 1


def test_every_key_the_modules_read_is_declared():
    """A key read by any module (``_get(cfg, "k")``, ``cfg_get(cfg, "k")``, ``_setting(cfg, "k")``)
    must be in the schema, or the unknown-key check would reject it on the command line."""
    import re

    pattern = re.compile(r"\b(?:_get|cfg_get|_setting)\(\s*cfg\s*,\s*\"([a-z_0-9]+)\"")
    read = {}
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "__pycache__", "build")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    for key in pattern.findall(f.read()):
                        read.setdefault(key, os.path.relpath(path, REPO))
    assert len(read) > 20  # the scan finds the modules' keys
    undeclared = {k: v for k, v in read.items() if k not in config_utils.KNOWN_KEYS}
    assert undeclared == {}
