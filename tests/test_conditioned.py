"""The conditioned regime (issue 20): header numbers round-trip, FiLM has an effect, the
metadata path tells contrasts apart, and a header without the numbers is refused cleanly."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner
from conftest import masked_kspace_batch, set_args, tiny_run_settings, write_tiny_root

from mrbench.cli import main
from mrbench.config import config_from_dict
from mrbench.data.assemble import assemble
from mrbench.data.contexts import Context
from mrbench.data.dataset import SliceDataset
from mrbench.data.fastmri_format import ACQUISITION_FIELDS, FAMILIES, read_meta, sequence_family
from mrbench.data.synth.build import SynthSpec, header_parameters, synthesize
from mrbench.data.synth.physics import FIELD_STRENGTH_T, resolve_contrast
from mrbench.distributed import select_device
from mrbench.methods import build_method
from mrbench.models import build_backbone
from mrbench.models.conditioning import (
    ConditionedNormUNet,
    ConditionedUNet,
    ConditionedVarNet,
    metadata_features,
    num_metadata_features,
)
from mrbench.models.unet import NormUNet
from mrbench.store import RunStore

TINY = dict(cascades=2, chans=4, pools=2, sens_chans=2, sens_pools=1)
NAN = math.nan


def _acq(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_synth_header_numbers_round_trip_through_the_file(tmp_path):
    spec = SynthSpec(
        subjects=6,
        size=16,
        slices=1,
        contrasts=("AXT1", "AXFLAIR", {"name": "T1GRE", "sequence": "gre", "tr": 20, "te": 5, "flip": 30}),
        source="phantom",
    )
    synthesize(spec, tmp_path / "d")
    for name, seq in spec.sequences().items():
        meta = read_meta(tmp_path / "d" / "train" / f"synth_{name}_000.h5")
        written = header_parameters(seq)
        family = FAMILIES.index(seq.kind)  # synth's sequence_type names its kind's family
        assert meta.acquisition == (*(written[f] for f in ACQUISITION_FIELDS), family), name
    flair = read_meta(tmp_path / "d" / "train" / "synth_AXFLAIR_000.h5").acquisition
    assert flair[2] == pytest.approx(resolve_contrast("AXFLAIR")[1].ti, abs=0.01) and flair[4] == FIELD_STRENGTH_T


def test_the_sequence_type_names_the_family_where_the_numbers_would_mislead():
    """fastMRI's turbo-spin-echo files carry a TI: the header's sequence type decides."""
    assert [
        sequence_family(t)
        for t in (
            "TurboSpinEcho",
            "InversionRecovery",
            "Flash",
            "TurboInversionRecovery",
            "GradientEcho",
            "somethingelse",
            None,
        )
    ] == [0, 1, 2, 1, 2, None, None]
    tse_with_ti = _acq([2750, 27, 100, 160, 3.0, 0], [2750, 27, 100, 160, 3.0, NAN])
    f = metadata_features(tse_with_ti, [Context("CORPD_FBK")] * 2)
    assert f[0, 8:11].tolist() == [0, 0, 1] and f[1, 8:11].tolist() == [1, 0, 0]  # named: se; numbers only: ir


def test_metadata_features_tell_families_and_sampling_apart():
    acq = _acq([500, 15, NAN, 90, 1.5], [9000, 100, 1704, 90, 1.5], [20, 5, NAN, 30, NAN], [500, 15, NAN, 90, 1.5])
    ctxs = [Context("AXT1"), Context("AXFLAIR"), Context("T1GRE"), Context("AXT1", "random", 6.0)]
    f = metadata_features(acq, ctxs)
    assert f.shape == (4, num_metadata_features()) and torch.isfinite(f).all()
    family = f[:, 8:11]
    assert family.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]]  # se, ir, gre, se
    assert f[2, 6] == 0 and f[0, 6] == 1  # field strength present / absent
    assert not torch.equal(f[0], f[3])  # same contrast, other sampling


def test_film_after_the_norm_changes_the_output_and_zero_heads_change_nothing():
    torch.manual_seed(0)
    net = NormUNet(4, 2, correction=False)
    z = torch.randn(2, 1, 16, 16, dtype=torch.complex64)
    plain = net(z).detach()
    cond = ConditionedNormUNet(net, 8)
    e = torch.randn(2, 8)
    torch.testing.assert_close(cond(z, e), plain)  # zero-initialised heads: the plain U-Net
    with torch.no_grad():
        cond.head.weight.normal_(0, 0.3)
    a, b = cond(z, e), cond(z, -e)
    assert (a - plain).abs().mean() > 1e-3 * plain.abs().mean()  # not cancelled by a later norm
    assert (a - b).abs().mean() > 1e-3 * plain.abs().mean()
    assert all(n.film is None for n in cond.norms)  # the modulation lasts one forward pass


@pytest.mark.parametrize("backbone", ["varnet", "unet"])
@pytest.mark.parametrize("on", ["metadata", "prompt", "both"])
def test_conditioned_backbones_start_as_the_plain_one_and_respond_to_their_condition(backbone, on):
    torch.manual_seed(0)
    plain = build_backbone(backbone, **(TINY if backbone == "varnet" else dict(chans=4, pools=2)))
    k, m, n = masked_kspace_batch(2)
    ref = plain(k, m, n).detach()
    model = (ConditionedVarNet if backbone == "varnet" else ConditionedUNet)(plain, on, 8, 3)
    f = metadata_features(_acq([500, 15, NAN, 90, 1.5], [500, 15, NAN, 90, 1.5]), [Context("AXT1")] * 2)
    torch.testing.assert_close(model(k, m, n, f), ref)
    for p in model.modules():
        if isinstance(p, ConditionedNormUNet):
            with torch.no_grad():
                p.head.weight.normal_(0, 0.3)
    out = model(k, m, n, f)
    if on != "prompt":  # other header numbers (an unseen FLAIR) → another output
        g = metadata_features(_acq([9000, 100, 1704, 90, 1.5], [9000, 100, 1704, 90, 1.5]), [Context("AXFLAIR")] * 2)
        assert (model(k, m, n, g) - out).abs().mean() > 1e-4 * out.abs().mean()
    if on != "metadata":  # other prompt weights → another output
        banks = [b for b in model.modules() if type(b).__name__ == "PromptBank"]
        with torch.no_grad():
            for bank in banks:
                bank.select.bias.copy_(torch.tensor([10.0, 0.0, 0.0]))  # all weight on prompt 0
        w0 = model(k, m, n, f)
        with torch.no_grad():
            for bank in banks:
                bank.select.bias.copy_(torch.tensor([0.0, 0.0, 10.0]))
        assert (model(k, m, n, f) - w0).abs().mean() > 1e-4 * out.abs().mean()


def test_a_trained_conditioned_run_uses_the_metadata_and_embeds_an_unseen_contrast_apart(three_contrast_root, tmp_path):
    """Effect within a real (short) run: the FiLM heads moved off zero, the trained network's
    output depends on the header numbers, and the unseen AXFLAIR's embedding is not any seen
    contrast's."""
    sets = tiny_run_settings(three_contrast_root, tmp_path, "train.budget=96", "train.lr=0.01")
    res = CliRunner().invoke(main, ["run", "conditioned", "--quiet", *set_args(sets)])
    assert res.exit_code == 0, res.output
    run = tmp_path / "default" / "conditioned-varnet-metadata-s0-seed0"
    store = RunStore(run)
    cfg = config_from_dict(store.read_json("config.json"))
    data = assemble(cfg.data, cfg.scarcity, cfg.eval.support, cfg.eval.support_unit)
    method = build_method(cfg, data, select_device("cpu"))
    method.load_state_dict(store.load_checkpoint("best")["models"])
    model = method.models["conditioned"].eval()
    heads = [m.head.weight for m in model.modules() if isinstance(m, ConditionedNormUNet)]
    assert heads and all(h.abs().max() > 1e-4 for h in heads)
    ds = SliceDataset(data.train, train=False)
    batch = torch.utils.data.default_collate([ds[i] for i in (0, 1)])
    with torch.no_grad():
        out = method.run_model(model, batch)
        other = batch._replace(acquisition=_acq([9000, 100, 1704, 90, 1.5], [9000, 100, 1704, 90, 1.5]))
        moved = method.run_model(model, other)
        assert (out - moved).abs().mean() > 1e-4 * out.abs().mean()
        unseen = SliceDataset(data.unseen_test, train=False)
        ub = torch.utils.data.default_collate([unseen[0]])
        e_unseen = method.embedding(ub, data.unseen_test[0].context)
        for t, task in enumerate(data.train):
            sb = torch.utils.data.default_collate([ds[ds.task_items(t)[0]]])
            assert (method.embedding(sb) - e_unseen).abs().max() > 1e-3, task.name
    metrics = store.read_json("metrics.json")
    assert "AXFLAIR/equispaced/6x" in metrics["contexts"]


def test_metadata_conditioning_refuses_a_header_without_the_numbers(tmp_path):
    root = tmp_path / "bare"
    write_tiny_root(root, contrasts=("AXT1", "AXT2", "AXFLAIR"), headers=False)
    r = CliRunner()
    res = r.invoke(main, ["run", "conditioned", "--quiet", *set_args(tiny_run_settings(root, tmp_path / "o"))])
    assert res.exit_code == 2
    line = res.output.strip()
    assert len(line.splitlines()) == 1 and ".h5" in line and "sequenceParameters/TR" in line and "prompt" in line
    assert not (tmp_path / "o").exists()  # nothing written
    ok = r.invoke(
        main,
        [
            "run",
            "conditioned",
            "--quiet",
            *set_args(tiny_run_settings(root, tmp_path / "o", "condition.on=prompt", "train.budget=16")),
        ],
    )
    assert ok.exit_code == 0, ok.output


def test_condition_options_are_checked():
    res = CliRunner().invoke(main, ["run", "conditioned", "--quiet", "--set", "condition.on=header"])
    assert res.exit_code == 2 and "condition.on" in res.output and "metadata" in res.output


def test_conditioned_trains_on_multicoil_files(tmp_path):
    """fastMRI's multi-coil layout: the conditioned VarNet's cascades go through the operator
    with estimated sensitivities."""
    root = tmp_path / "mc"
    write_tiny_root(root, contrasts=("AXT1", "AXT2", "AXFLAIR"), coils=2, per_split={"train": 2, "val": 1, "test": 1})
    res = CliRunner().invoke(
        main,
        [
            "run",
            "conditioned",
            "--quiet",
            *set_args(tiny_run_settings(root, tmp_path / "o", "condition.on=both", "train.budget=16")),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "default" / "conditioned-varnet-both-s0-seed0" / "DONE").exists()
