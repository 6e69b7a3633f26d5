"""The one U-Net (issue 32 item 4): ``unet``, ``km-unet`` and the multi-task blocks (I, V, Y, W)
run through :class:`mrbench.models.unet.UNet`'s one forward pass (its ``block`` and ``gate``
hooks), and give *bit-identical* images and gradients to the three copies of that pass they
replaced. The reference (``tests/data/unet_reference.pt``: every image and gradient, and the
CPU that wrote it) was written by this module's ``__main__`` run against the code before the
change (commit 6439337^). On a CPU of the same model the test asserts bit-identity; on another
one float32 agreement: the same code's convolutions sum in another order under
another instruction set (an AMD EPYC differs from the Intel Xeon in the last bit, 2e-7 of
the image; two generations of AMD EPYC, with and without AVX-512, by up to 3e-7 of the
largest gradient after the backward pass through every layer), so bits cannot be compared
across machines; there the test allows 1e-5 of the largest value of the model's image or
gradient set (``mrbench.store.cpu_model`` names the CPU with its family, model and torch's
instruction set). Regenerate only on purpose, from the
old code: ``git worktree add /tmp/old 6439337^ && PYTHONPATH=/tmp/old python tests/test_unet_reference.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mrbench.models import build_backbone

if __name__ != "__main__":
    from mrbench.store import cpu_model

REFERENCE = Path(__file__).parent / "data" / "unet_reference.pt"

CASES = {
    "unet": ("unet", dict(chans=4, pools=2)),
    "km-unet": ("km-unet", dict(chans=4, pools=2, embedding=8, rank=2)),
    "mtl-IVYW": ("mtl-varnet", dict(num_tasks=2, blocks="IVYW", chans=4, pools=2, sens_chans=2, sens_pools=1)),
}


def _outputs(cases=tuple(CASES)) -> dict[str, torch.Tensor]:
    """On one thread: a multi-threaded reduction may sum in another order, and bit-identity
    is the claim (the reference was written on one thread too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _outputs_one_thread(cases)
    finally:
        torch.set_num_threads(threads)


def _outputs_one_thread(cases) -> dict[str, torch.Tensor]:
    out = {}
    for case in cases:
        name, kwargs = CASES[case]
        for coils in (1, 3):
            torch.manual_seed(0)
            model = build_backbone(name, **kwargs)
            with torch.no_grad():
                for p in model.parameters():  # off the identity/zero-correction start: every layer matters
                    p.add_(0.05 * torch.randn_like(p))
            g = torch.Generator().manual_seed(7 + coils)
            k = torch.randn(3, coils, 18, 20, generator=g, dtype=torch.complex64)
            mask = (torch.rand(3, 1, 1, 20, generator=g) < 0.4).float().expand(3, 1, 18, 20).contiguous()
            mask[..., 8:12] = 1.0
            args = (k * mask, mask, torch.full((3,), 4, dtype=torch.long))
            if name == "mtl-varnet":
                args = (*args, torch.tensor([0, 1, 0]))
            image = model(*args)
            params = [p for p in model.parameters() if p.requires_grad]
            grads = torch.autograd.grad(image.abs().square().mean(), params, allow_unused=True)
            key = f"{case}/{coils}coil"
            out[key + "/image"] = image.detach()
            for (pname, _), grad in zip(model.named_parameters(), grads):
                if grad is not None:
                    out[f"{key}/grad/{pname}"] = grad.detach().clone()
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_one_unet_gives_bit_identical_outputs_and_gradients(case):
    ref = torch.load(REFERENCE)
    now = _outputs([case])
    keys = sorted(k for k in ref["tensors"] if k.startswith(case + "/"))
    assert keys and sorted(now) == keys  # same parameters (names), same gradients present
    same_cpu = ref["cpu"] == cpu_model()
    # float32 agreement across CPUs is on the scale of the model's image, or of its whole
    # gradient set, per coil count ("unet/1coil/grad"): a bias gradient that sums to ~0 (1e-10
    # against the weights' 1e-4) carries the rounding of its terms, not of its value, while a
    # wrong block moves things by O(1).
    scale: dict[str, float] = {}
    for key in keys:
        group = "/".join(key.split("/")[:3])
        scale[group] = max(scale.get(group, 0.0), float(ref["tensors"][key].abs().max()))
    for key in keys:
        want = ref["tensors"][key]
        if same_cpu:
            assert torch.equal(now[key], want), key
        else:
            atol = 1e-5 * scale["/".join(key.split("/")[:3])]
            torch.testing.assert_close(now[key], want, rtol=1e-5, atol=atol, msg=key)


def _this_checkouts_cpu_model():
    """``mrbench.store.cpu_model`` of this checkout while the models come from PYTHONPATH's
    (the old code, which has no such function): import it aside, then put the old package back."""
    import sys

    old = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "mrbench" or k.startswith("mrbench.")}
    sys.path.insert(0, str(Path(__file__).parents[1]))
    try:
        from mrbench.store import cpu_model as fingerprint
    finally:
        sys.path.pop(0)
        for k in [k for k in sys.modules if k == "mrbench" or k.startswith("mrbench.")]:
            del sys.modules[k]
        sys.modules.update(old)
    return fingerprint()


if __name__ == "__main__":
    cpu = _this_checkouts_cpu_model()
    torch.save({"cpu": cpu, "tensors": _outputs()}, REFERENCE)
    print(f"wrote {REFERENCE} on {cpu}")
