"""Shared fixtures: tiny fastMRI-format datasets made on the fly (no nilearn needed)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from mrbench.data.fastmri_format import write_volume
from mrbench.fourier import fft2c, ifft2c, rss


def _xdist_workers() -> int:
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)


def worker_threads() -> int:
    """This test process's share of the cores: all of them serially, ``cores // workers`` under
    pytest-xdist (``make test`` runs one worker per core). Runs a test starts take it as
    ``train.threads``: 2-thread runs beside another worker on 2 cores oversubscribed them
    (test_learning's cases took 19–35 s; 2–5 s at the worker's share)."""
    return max(1, (os.cpu_count() or 1) // max(1, _xdist_workers()))


def pytest_configure(config):
    """Under pytest-xdist each worker gets its share of the cores as torch threads, so the
    workers do not oversubscribe the machine."""
    if _xdist_workers() > 1:
        torch.set_num_threads(worker_threads())


def blob_volume(rng: np.random.Generator, slices: int, h: int, w: int, coils: int = 1):
    """A smooth complex 'anatomy' (sum of Gaussian blobs) → (kspace, target) in fastMRI layout."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    img = np.zeros((slices, h, w), np.complex64)
    for s in range(slices):
        for _ in range(6):
            cy, cx = rng.uniform(-0.5, 0.5, 2)
            r = rng.uniform(0.1, 0.4)
            img[s] += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    img = img * np.exp(1j * 0.5 * xx)
    x = torch.from_numpy(img.astype(np.complex64))
    if coils > 1:
        ang = torch.linspace(0, 2 * np.pi, coils + 1)[:-1]
        yy_t, xx_t = torch.from_numpy(yy).float(), torch.from_numpy(xx).float()
        sens = torch.stack([torch.exp(-((yy_t - 0.8 * a.sin()) ** 2 + (xx_t - 0.8 * a.cos()) ** 2)) for a in ang])
        sens = sens / rss(sens, dim=0)
        coil_imgs = x[:, None] * sens[None].to(torch.complex64)
        k = fft2c(coil_imgs)
        target = rss(ifft2c(k), dim=1)
    else:
        k = fft2c(x)
        target = ifft2c(k).abs()
    return k.numpy(), target.numpy().astype(np.float32)


def write_tiny_root(root, contrasts=("AXT1", "AXT2"), per_split=None, slices=3, size=32, coils=1, seed=0, headers=True):
    """train/val/test dirs with one file per (subject, contrast); ``headers``: the built-in
    contrasts' acquisition numbers in each ismrmrd_header (as synth writes them)."""
    from mrbench.data.synth.build import header_parameters
    from mrbench.data.synth.physics import NAMED_CONTRASTS

    per_split = per_split or {"train": 4, "val": 1, "test": 2}
    rng = np.random.default_rng(seed)
    paths = []
    subject = 0
    for split, n in per_split.items():
        for _ in range(n):
            for c in contrasts:
                k, t = blob_volume(rng, slices, size, size, coils)
                p = root / split / f"tiny_{c}_{subject:03d}.h5"
                seq = NAMED_CONTRASTS.get(c) if headers else None
                write_volume(
                    p,
                    k,
                    t,
                    acquisition=c,
                    patient_id=f"p{subject}",
                    header_params=header_parameters(seq) if seq else None,
                )
                paths.append(p)
            subject += 1
    return paths


def tiny_run_settings(data_root, out, *extra):
    """``--set`` items for a run that takes seconds: tiny VarNet, 32-slice budget, one
    validation volume, an unseen AXFLAIR context; later items override earlier ones."""
    return [
        f"data.root={data_root}",
        f"run.out={out}",
        "data.val_volumes=1",
        "train.budget=32",
        "train.batch=4",
        "train.val_every=16",
        "train.threads=1",
        "model.cascades=2",
        "model.chans=4",
        "model.pools=2",
        "model.sens_chans=2",
        "model.sens_pools=1",
        'data.unseen=[{contrast="AXFLAIR", acceleration=6}]',
        "eval.adapt_steps=0,2",
        "eval.support=2",
        *extra,
    ]


def set_args(items) -> list[str]:
    """``--set`` items as CLI arguments."""
    return sum((["--set", s] for s in items), [])


def masked_kspace_batch(b: int, coils: int = 1, size: int = 16, seed: int = 0):
    """(masked k-space, mask, low-frequency lines) of random k-space under a 2× + centre mask:
    the backbone inputs the model tests push through tiny networks."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(b, coils, size, size, generator=g, dtype=torch.complex64)
    mask = torch.zeros(b, 1, size, size)
    mask[..., ::2] = 1
    mask[..., size // 2 - 2 : size // 2 + 2] = 1
    return k * mask, mask, torch.full((b,), 4)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is faster, and immune to a busy machine (tiny runs set 1 anyway)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def three_contrast_root(tmp_path_factory):
    """AXT1, AXT2 and AXFLAIR tiny volumes, shared (read-only) by the CLI-level tests."""
    root = tmp_path_factory.mktemp("three") / "d"
    write_tiny_root(root, contrasts=("AXT1", "AXT2", "AXFLAIR"))
    return root


@pytest.fixture
def tiny_root(tmp_path):
    root = tmp_path / "tiny"
    write_tiny_root(root)
    return root


@pytest.fixture(scope="session")
def finished_experiment(tmp_path_factory):
    """A finished tiny experiment for the report/table tests: zero-filled, joint and stl at
    scarcity levels 0 and 1 on AXT1 + AXT2 (3 test volumes each), AXFLAIR unseen (0, 2 steps).
    Returns the experiment directory."""
    from mrbench.config import load_config
    from mrbench.runner import execute

    base = tmp_path_factory.mktemp("finished")
    root = base / "data"
    write_tiny_root(root, contrasts=("AXT1", "AXT2", "AXFLAIR"), per_split={"train": 4, "val": 1, "test": 3}, slices=3)
    out = base / "runs"
    for method in ("zero-filled", "joint", "stl"):
        for level in (0, 1):
            cfg = load_config(None, tiny_run_settings(root, out, "run.experiment=exp"), method=method, scarcity=level)
            execute(cfg, quiet=True)
    return out / "exp"
