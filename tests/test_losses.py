"""The loss axis (issue 13): each loss's defining property, not only that it runs — MC is zero
on a consistent image; SSDU's splits are disjoint and cover the mask; EI/MOI vanish for an
equivariant identity-like network and penalise one that is not; every loss trains a method
end to end and shows in the run name."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_run_settings, write_tiny_root

from mrbench.config import load_config
from mrbench.data.dataset import Sample
from mrbench.errors import MrbenchError
from mrbench.fourier import fft2c, ifft2c
from mrbench.losses import LOSSES
from mrbench.losses.ssdu import split_mask
from mrbench.runner import execute


class Cfg:  # the keys the losses read
    class loss:
        split_ratio = 0.4
        ei_weight = 1.0


def sample(mask: torch.Tensor, seed: int = 0) -> tuple[Sample, torch.Tensor]:
    """A single-coil batch measuring a random image x with ``mask``; returns (batch, x)."""
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = mask.shape
    x = torch.randn(b, h, w, generator=g, dtype=torch.complex64)
    y = mask * fft2c(x.unsqueeze(1))
    batch = Sample(
        y,
        mask,
        x.abs(),
        ifft2c(y)[:, 0].abs(),
        torch.zeros(b, dtype=torch.long),
        ["f"] * b,
        torch.arange(b),
        torch.ones(b),
        torch.full((b,), 4),
    )
    return batch, x


def column_mask(b=3, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    cols = (torch.rand(b, 1, 1, w, generator=g) < 0.4).float()
    cols[..., w // 2 - 2 : w // 2 + 2] = 1  # 4 ACS columns
    return cols.expand(b, 1, h, w).contiguous()


def zero_filled(b: Sample) -> torch.Tensor:
    """A^H y: consistent with the measurements, and equivariant when nothing is missing."""
    return ifft2c(b.kspace)[:, 0]


def test_mc_is_zero_on_a_consistent_image_and_positive_otherwise():
    batch, x = sample(column_mask())
    mc = LOSSES["mc"](Cfg.loss)
    assert torch.allclose(mc(zero_filled, batch), torch.zeros(3), atol=1e-6)
    assert torch.allclose(mc(lambda b: x, batch), torch.zeros(3), atol=1e-6)  # the truth too
    assert (mc(lambda b: 1.1 * x, batch) > 1e-2).all()


def test_ssdu_splits_are_disjoint_cover_the_mask_and_keep_the_centre():
    mask = column_mask(b=4, seed=1)
    torch.manual_seed(0)
    theta, lam = split_mask(mask, torch.full((4,), 4), 0.4)
    assert torch.equal(theta * lam, torch.zeros_like(mask))  # disjoint
    assert torch.equal(theta + lam, mask)  # cover Ω exactly
    assert lam.sum() > 0 and theta.sum() > 0
    assert torch.equal(lam[..., 6:10], torch.zeros_like(lam[..., 6:10]))  # ACS stays in Θ
    assert torch.equal(lam, lam[..., :1, :].expand_as(lam))  # column mask → column split
    frac = float(lam.sum() / (mask.sum() - 4 * 16 * 4))
    assert 0.15 < frac < 0.65  # about split_ratio of the non-ACS measured points
    points = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    theta, lam = split_mask(points, torch.zeros(2, dtype=torch.long), 0.4)
    assert torch.equal(theta + lam, points) and not torch.equal(lam, lam[..., :1, :].expand_as(lam))


def test_ssdu_checks_the_held_out_points_with_the_network_on_the_rest():
    batch, x = sample(column_mask())
    torch.manual_seed(0)
    seen = []
    ssdu = LOSSES["ssdu"](Cfg.loss)

    def run(b):
        seen.append(b.mask)
        return x  # knows the image: held-out points match

    assert torch.allclose(ssdu(run, batch), torch.zeros(3), atol=1e-6)
    assert (seen[0] <= batch.mask).all() and seen[0].sum() < batch.mask.sum()
    assert (ssdu(zero_filled, batch) > 1e-2).all()  # zero-filled from Θ misses Λ's lines


@pytest.mark.parametrize("name", ["ei", "moi", "mo-ei"])
def test_equivariance_losses_vanish_for_an_equivariant_identity_like_network(name):
    """Fully sampled: A^H y is the identity on images, equivariant and consistent — loss 0."""
    full = torch.ones(3, 1, 16, 16)
    batch, x = sample(full)
    torch.manual_seed(0)
    assert torch.allclose(LOSSES[name](Cfg.loss)(zero_filled, batch), torch.zeros(3), atol=1e-5)


@pytest.mark.parametrize("name", ["ei", "mo-ei"])
def test_equivariance_losses_penalise_a_network_that_ignores_its_input(name):
    """A network returning the truth whatever it is given is consistent (MC = 0) but not
    equivariant: f(A T x) = x ≠ T x."""
    batch, x = sample(column_mask())
    torch.manual_seed(3)
    values = torch.stack([LOSSES[name](Cfg.loss)(lambda b: x, batch) for _ in range(4)])
    assert (values.max(dim=0).values > 1e-2).all()
    assert torch.allclose(LOSSES["mc"](Cfg.loss)(lambda b: x, batch), torch.zeros(3), atol=1e-6)


def test_ei_does_not_accept_zero_filled_for_a_symmetric_column_mask():
    """An equispaced column mask, mirror-symmetric about the centre: shifts and flips leave its
    null space alone, so under them the zero-filled image minimised the EI term exactly and
    MoDL collapsed to it. A rotation turns the missing columns into missing rows: penalised."""
    w = 16
    cols = torch.zeros(w)
    cols[::4] = 1
    cols[w // 2 - 2 : w // 2 + 2] = 1
    cols = torch.maximum(cols, cols[(w - torch.arange(w)) % w])  # symmetric under k → −k (centre w/2)
    batch, _ = sample(cols.view(1, 1, 1, w).expand(3, 1, 16, w).contiguous())
    ei = LOSSES["ei"](Cfg.loss)
    torch.manual_seed(0)
    values = torch.stack([ei(zero_filled, batch) - LOSSES["mc"](Cfg.loss)(zero_filled, batch) for _ in range(6)])
    assert (values.mean(dim=0) > 0.1).all()  # shifts and flips gave < 1e-7


def test_rotation_of_a_non_square_image_keeps_a_centred_disc():
    from mrbench.losses.equivariant import rotate

    yy, xx = torch.meshgrid(torch.arange(20.0) - 9.5, torch.arange(32.0) - 15.5, indexing="ij")
    disc = ((yy**2 + xx**2) < 36).to(torch.complex64)[None]
    out = rotate(disc, 0.7)
    assert out.shape == disc.shape
    assert (out - disc).abs().mean() < 0.02  # a disc about the centre is rotation-invariant
    assert (rotate(disc, 0.0) - disc).abs().max() < 1e-5


def test_moi_measures_with_other_operators():
    batch, x = sample(column_mask())
    masks = []

    def run(b):
        masks.append(b.mask)
        return zero_filled(b)

    LOSSES["moi"](Cfg.loss)(run, batch)
    assert len(masks) == 2 and not torch.equal(masks[1], batch.mask)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("losses") / "d"
    write_tiny_root(root, contrasts=("AXT1", "AXT2", "AXFLAIR"), per_split={"train": 2, "val": 1, "test": 1}, slices=4)
    return root


@pytest.mark.parametrize("loss", sorted(set(LOSSES) - {"sup"}))
def test_every_loss_trains_a_method_and_is_in_the_run_name(loss, data_root, tmp_path):
    cfg = load_config(
        None,
        tiny_run_settings(data_root, tmp_path, "train.budget=16", f"train.loss={loss}", "eval.adapt_steps=[0, 1]"),
        method="stl",
    )
    assert cfg.run_name == f"stl-varnet-{loss}-s0-seed0"
    store = execute(cfg, quiet=True)
    m = store.read_json("metrics.json")
    assert all(c["steps"]["0"]["mean"]["psnr"] > 0 for c in m["contexts"].values())
    assert store.read_json("config.json")["train"]["loss"] == loss


def test_unknown_loss_lists_the_valid_ones():
    with pytest.raises(
        MrbenchError,
        match="train.loss: unknown loss 'n2n'; valid: ei, mc, mo-ei, moi, noise2inverse, ssdu, sup, weighted-ssdu",
    ):
        load_config(None, ["train.loss=n2n"], method="stl")
    with pytest.raises(MrbenchError, match="loss.split_ratio: must be in"):
        load_config(None, ["train.loss=ssdu", "loss.split_ratio=1.5"], method="stl")


def test_self_supervised_loss_on_multicoil_data_is_refused_before_the_run_exists(tmp_path):
    root = tmp_path / "mc"
    write_tiny_root(
        root, contrasts=("AXT1", "AXT2", "AXFLAIR"), per_split={"train": 2, "val": 1, "test": 1}, slices=2, coils=2
    )
    cfg = load_config(None, tiny_run_settings(root, tmp_path / "runs", "train.loss=ei"), method="stl")
    with pytest.raises(MrbenchError, match="train.loss = 'ei': the self-supervised losses need single-coil data"):
        execute(cfg, quiet=True)
    assert not cfg.run_dir.exists()


def test_noise2inverse_trains_like_ssdu_and_averages_splits_at_inference():
    class N2I(Cfg):
        class loss:
            split_ratio = 0.4
            eval_splits = 3

    batch, x = sample(column_mask())
    n2i, ssdu = LOSSES["noise2inverse"](N2I.loss), LOSSES["ssdu"](N2I.loss)
    torch.manual_seed(0)
    a = n2i(zero_filled, batch)
    torch.manual_seed(0)
    torch.testing.assert_close(a, ssdu(zero_filled, batch))  # the same training loss
    masks = []

    def run(b):
        masks.append(b.mask)
        return zero_filled(b)

    state = torch.get_rng_state()
    out = n2i.infer(run, batch)
    assert torch.equal(torch.get_rng_state(), state)  # inference leaves the training stream alone
    assert len(masks) == 3 and all((m <= batch.mask).all() for m in masks) and not torch.equal(masks[0], masks[1])
    torch.testing.assert_close(out, sum(ifft2c(batch.kspace * m)[:, 0] for m in masks) / 3)
    torch.testing.assert_close(n2i.infer(zero_filled, batch), out)  # deterministic
    assert torch.equal(LOSSES["ssdu"](N2I.loss).infer(zero_filled, batch), zero_filled(batch))  # SSDU: all of Ω


def test_weighted_ssdu_weighs_sparsely_sampled_kspace_more():
    """Millard & Chiew's weights (1 − K)^(−1/2): for a uniform-density mask every held-out
    point gets the same weight √((1 − P̃P)/(P(1 − P̃))), so the loss is SSDU's times it; for a
    variable-density mask the sparse outer k-space weighs more than the dense centre."""
    from mrbench.data.contexts import Context
    from mrbench.losses.ssdu import sampling_density

    ctx = Context("AXT1", "random", 4.0, 0.08)
    mask = torch.from_numpy(ctx.mask_func()((16, 32), 5).mask).expand(2, 1, 16, 32).contiguous()
    batch, x = sample(mask)
    wssdu, ssdu = LOSSES["weighted-ssdu"](Cfg.loss), LOSSES["ssdu"](Cfg.loss)
    wssdu.contexts = [ctx]
    p = sampling_density(ctx, (16, 32))
    outer = p[0, :8]  # outside the ACS band
    assert torch.allclose(outer, outer.mean().expand_as(outer), atol=0.12)  # uniform density outside the centre
    torch.manual_seed(0)
    a = wssdu(zero_filled, batch)
    torch.manual_seed(0)
    b = ssdu(zero_filled, batch)
    w = wssdu.weights(batch)
    assert (w >= 1 - 1e-6).all()  # = 1 where P = 1 (the ACS band), to float rounding (0.99999994 on some CPUs)
    pm = float(outer.mean())
    expected = ((1 - 0.6 * pm) / (pm * 0.4)) ** 0.5  # P̃ = 1 − split_ratio = 0.6
    assert torch.allclose(a / b, torch.full_like(a, expected), rtol=0.15)
    gauss = Context("AXT1", "gaussian", 4.0, 0.08)
    wssdu.adapting = gauss  # an unseen context being adapted to: its own density
    wg = wssdu.weights(batch)[0, 0, 0]
    assert wg[0] > wg[12]  # the edge of k-space (rarely sampled) weighs more than near the centre


def undersample_in_place(path, acceleration=4, low=4):
    """Rewrite a tiny file as an already undersampled scan in fastMRI's test layout: masked
    k-space, its own `mask`, `num_low_frequencies`, and no target."""
    import h5py
    import numpy as np

    with h5py.File(path, "r") as f:
        k = f["kspace"][()]
        attrs = dict(f.attrs)
        header = f["ismrmrd_header"][()] if "ismrmrd_header" in f else None
    w = k.shape[-1]
    mask = np.zeros(w, dtype=np.float32)
    mask[::acceleration] = 1
    mask[w // 2 - low // 2 : w // 2 + low // 2] = 1
    path.unlink()
    with h5py.File(path, "w") as f:
        f["kspace"] = (k * mask).astype(np.complex64)
        f["mask"] = mask
        if header is not None:
            f["ismrmrd_header"] = header
        for key, v in attrs.items():
            if key != "max":
                f.attrs[key] = v
        f.attrs["num_low_frequencies"] = low
    return mask


def test_a_scarce_contrast_with_undersampled_scans_only_trains_self_supervised(tmp_path):
    """Issue 13's point: the scarce contrast's training volumes hold undersampled k-space and
    their own mask, no target. A self-supervised loss trains on them as they are (the stored
    mask, never a drawn one); the supervised loss is refused before the run exists."""
    from mrbench.data.dataset import SliceDataset, VolumeStore
    from mrbench.data.index import scan

    root = tmp_path / "d"
    write_tiny_root(root, contrasts=("AXT1", "AXT2", "AXFLAIR"), per_split={"train": 2, "val": 1, "test": 1}, slices=4)
    stored = [undersample_in_place(p) for p in sorted((root / "train").glob("*AXT2*.h5"))]
    vols = [v for v in scan(root, cache=False).volumes["train"] if v.contrast == "AXT2"]
    assert vols and all(v.stored_mask and v.target_key is None for v in vols)
    sets = ["data.tasks=[AXT1, AXT2]", "data.scarce=[AXT2]"]
    cfg = load_config(
        None,
        tiny_run_settings(
            root, tmp_path / "runs", "train.budget=16", "train.loss=ssdu", "eval.adapt_steps=[0, 1]", *sets
        ),
        method="joint",
    )
    from mrbench.data.assemble import assemble

    data = assemble(cfg.data, 0, cfg.eval.support, cfg.eval.support_unit)
    ds = SliceDataset(data.train, train=True, store=VolumeStore(), targets_optional=True)
    for i in ds.task_items(1)[:3]:
        s = ds[i]
        assert torch.equal(s.mask[0, 0], torch.from_numpy(stored[0])) and s.max_value > 0
    store = execute(cfg, quiet=True)
    assert store.is_done() and all(
        c["steps"]["0"]["mean"]["psnr"] > 0 for c in store.read_json("metrics.json")["contexts"].values()
    )
    sup = load_config(None, tiny_run_settings(root, tmp_path / "runs2", "train.budget=16", *sets), method="joint")
    with pytest.raises(MrbenchError, match='has no target; train.loss = "sup" needs one'):
        execute(sup, quiet=True)
    assert not sup.run_dir.exists()


# --------------------------------------------------------------------------- mixed supervision


def test_mixed_supervision_gives_each_sample_its_tasks_loss():
    """data.self_supervised: the samples of those tasks get train.ssl_loss, the others the
    supervised loss, per sample and in batch order (so MTL weightings still average per task)."""
    from mrbench.data.contexts import Context
    from mrbench.data.dataset import take
    from mrbench.losses.mixed import MixedSupervision

    class MixCfg(Cfg):
        class data:
            self_supervised = ["AXFLAIR"]

    batch, x = sample(column_mask(b=4))
    batch = batch._replace(task=torch.tensor([0, 1, 1, 0]))
    sup, mc = LOSSES["sup"](MixCfg.loss), LOSSES["mc"](MixCfg.loss)
    mixed = MixedSupervision(sup, mc, MixCfg.data.self_supervised)
    mixed.contexts = [Context("AXT1"), Context("AXFLAIR")]

    def run(b):
        return 1.05 * ifft2c(b.kspace)[:, 0]  # neither consistent nor the truth: both losses > 0

    values = mixed(run, batch)
    ssl, other = torch.tensor([1, 2]), torch.tensor([0, 3])
    torch.testing.assert_close(values[ssl], mc(run, take(batch, ssl)))
    torch.testing.assert_close(values[other], sup(run, take(batch, other)))
    assert (values > 0).all()
    with mixed.adapting_to(Context("AXT2")):  # an unseen context is never self-supervised
        torch.testing.assert_close(mixed(run, batch), sup(run, batch))

    class Half(MixCfg):
        class train:
            ssl_weight = 0.5

    half = MixedSupervision(sup, mc, Half.data.self_supervised, Half.train.ssl_weight)
    half.contexts = mixed.contexts
    weighted = half(run, batch)
    torch.testing.assert_close(weighted[ssl], 0.5 * values[ssl])  # train.ssl_weight scales only those
    torch.testing.assert_close(weighted[other], values[other])


def test_a_scarce_contrast_without_targets_trains_self_supervised_beside_supervised_ones(three_contrast_root, tmp_path):
    """The regime no peer offers: AXT2's training files have no target at all; with
    data.self_supervised = ["AXT2"] joint training uses them through train.ssl_loss while AXT1
    stays supervised — and without it the same data is refused, naming a file."""
    import shutil

    import h5py
    from click.testing import CliRunner
    from conftest import set_args

    from mrbench.cli import main

    root = tmp_path / "d"
    shutil.copytree(three_contrast_root, root)
    stripped = sorted((root / "train").glob("*_AXT2_*.h5"))
    for f in stripped:
        with h5py.File(f, "a") as hf:
            del hf["reconstruction_esc"]
    sets = tiny_run_settings(root, tmp_path / "runs", "data.unseen=[]", "eval.adapt_steps=0")
    refused = CliRunner().invoke(main, ["run", "joint", "--quiet", *set_args(sets)])
    assert refused.exit_code == 2 and "has no target" in refused.output and "_AXT2_" in refused.output
    ok = CliRunner().invoke(
        main, ["run", "joint", "--quiet", *set_args(sets + ['data.self_supervised=["AXT2"]', "train.ssl_loss=mc"])]
    )
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "runs" / "default" / "joint-varnet-mc-on-AXT2-s0-seed0" / "DONE").exists()


@pytest.mark.parametrize(
    "sets,match",
    [
        (['data.self_supervised=["AXPD"]'], "is not one of data.tasks"),
        (['data.self_supervised=["AXT2"]', "train.loss=ei"], 'must then be "sup"'),
        (["train.ssl_loss=sup"], "must be a self-supervised loss"),
    ],
)
def test_mixed_supervision_settings_are_checked(sets, match):
    with pytest.raises(MrbenchError, match=match):
        load_config(None, sets)
