import json

import pytest

from mrbench.config import config_from_dict, load_config
from mrbench.errors import MrbenchError


def test_defaults_and_run_dir():
    cfg = load_config(None, [], method="joint")
    assert cfg.data.tasks == ["AXT1", "AXT2"] and cfg.train.budget == 2000 and cfg.model.backbone == "varnet"
    assert str(cfg.run_dir) == "runs/default/joint-varnet-s0-seed0"
    assert cfg.eval.adapt_steps == [0, 5, 10]
    # every default is written out and round-trips
    d = cfg.to_dict()
    assert d["train"]["val_every"] == 500 and d["model"]["size"] == "demo"
    assert config_from_dict(json.loads(json.dumps(d))) == cfg


def test_toml_then_set_overrides(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text(
        '[data]\ntasks = ["AXT1", "AXT2", "AXPD"]\nscarce = ["AXPD"]\nacceleration = 8\n'
        'unseen = [{ contrast = "AXFLAIR", mask = "random", acceleration = 6 }]\n'
        '[train]\nbudget = 300\nlr = 3e-4\n[run]\nexperiment = "exp"\n'
    )
    cfg = load_config(
        f, ["train.budget=500", "data.mask=random,gaussian2d", "eval.adapt_steps=3"], method="stl", scarcity=2
    )
    assert cfg.data.tasks == ["AXT1", "AXT2", "AXPD"] and cfg.data.acceleration == [8.0]
    assert cfg.data.unseen == [{"contrast": "AXFLAIR", "mask": "random", "acceleration": 6}]
    assert cfg.train.budget == 500 and cfg.train.lr == 3e-4 and cfg.scarcity == 2
    assert cfg.data.mask == ["random", "gaussian2d"] and cfg.eval.adapt_steps == [0, 3]
    assert str(cfg.run_dir) == "runs/exp/stl-varnet-s2-seed0"


@pytest.mark.parametrize(
    "sets,fragment",
    [
        (["train.budgt=5"], "unknown key 'train.budgt'"),
        (["nosection.x=1"], "unknown key 'nosection'"),
        (["train.budget=-5"], "train.budget: must be > 0"),
        (["train.budget=abc"], "train.budget: expected a number"),
        (["train.batch=2.5"], "train.batch: expected a whole number"),
        (["data.scarce=AXPD"], "data.scarce: 'AXPD' is not one of data.tasks"),
        (["data.acceleration=1"], "data.acceleration: must be > 1"),
        (["data.center_fraction=1.5"], "data.center_fraction: must be in (0, 1)"),
        (["model.backbone=resnet"], "unknown backbone 'resnet'; valid: km-unet, modl, mtl-varnet, rim, unet, varnet"),
        (["train.sampling=random"], "train.sampling"),
        (["budget"], "expected key=value"),
    ],
)
def test_bad_values_name_the_key(sets, fragment):
    with pytest.raises(MrbenchError, match=None) as exc:
        load_config(None, sets, method="stl")
    assert fragment in str(exc.value)


def test_unknown_method_lists_valid():
    with pytest.raises(MrbenchError, match="unknown method 'mamal'; valid: .*joint.*stl.*transfer.*zero-filled"):
        load_config(None, [], method="mamal")


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(MrbenchError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nbudget = ")
    with pytest.raises(MrbenchError, match=f"config file {bad}: invalid TOML"):
        load_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[train]\nepochs = 3\n")
    with pytest.raises(MrbenchError, match=f"config file {wrong}: unknown key 'train.epochs'"):
        load_config(wrong)


def test_mtl_run_names_carry_blocks_and_weighting():
    cfg = load_config(None, ["model.blocks=IIYY", "mtl.weighting=uncert"], method="mtl", scarcity=2)
    assert cfg.run_name == "mtl-IIYY-uncert-s2-seed0"
    assert load_config(None, [], method="mtl").run_name == "mtl-IIVV-naive-s0-seed0"  # demo: 4 cascades
    assert load_config(None, ["model.share_etas=false"], method="mtl").run_name == "mtl-IIVV-naive-etas-s0-seed0"
    with pytest.raises(MrbenchError, match="model.blocks: letters must be I, V, Y or W, got 'X'"):
        load_config(None, ["model.blocks=IIX"], method="mtl")
    with pytest.raises(MrbenchError, match="unknown weighting 'softmax'; valid: dwa, gradnorm, naive, pcgrad, uncert"):
        load_config(None, ["mtl.weighting=softmax"], method="mtl")


def test_atomic_writes_replace_whole_files_with_normal_permissions(tmp_path):
    import os
    import stat

    from mrbench import atomic

    target = tmp_path / "m.json"
    atomic.write_json(target, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text().strip().startswith("{") and list(tmp_path.iterdir()) == [
        target
    ]  # untouched, no temp left
