import numpy as np
import pytest
import torch

from mrbench.fourier import alternating_sign, fft2c, ifft2c, ifft2c_magnitude, rss


@pytest.mark.parametrize("shape", [(1, 32, 32), (1, 24, 40), (1, 31, 32), (1, 32, 33), (1, 15, 17)])
def test_ifft2c_magnitude_single_coil_equals_abs_of_ifft2c(shape):
    g = torch.Generator().manual_seed(0)
    k = torch.randn(*shape, dtype=torch.complex64, generator=g)
    got = ifft2c_magnitude(k, coil_dim=0)
    assert got.shape == shape[1:] and got.dtype == torch.float32 and got.is_contiguous()
    torch.testing.assert_close(got, ifft2c(k)[0].abs(), rtol=1e-5, atol=1e-6)


def test_ifft2c_magnitude_is_centred():
    # a centred point-like image stays centred: the magnitude is shifted back, not left in FFT order
    image = torch.zeros(1, 16, 16, dtype=torch.complex64)
    image[0, 8, 8] = 1
    image[0, 3, 12] = 0.5
    got = ifft2c_magnitude(fft2c(image), coil_dim=0)
    torch.testing.assert_close(got, image[0].abs(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(2, 4, 24, 24), (2, 3, 23, 24)])
def test_ifft2c_magnitude_multicoil_rss_and_batch(shape):
    g = torch.Generator().manual_seed(1)
    k = torch.randn(*shape, dtype=torch.complex64, generator=g)
    got = ifft2c_magnitude(k)  # coils on dim -3
    assert got.shape == (shape[0], *shape[-2:])
    torch.testing.assert_close(got, rss(ifft2c(k), dim=1), rtol=1e-5, atol=1e-6)


def test_ifft2c_magnitude_autograd_path_matches():
    g = torch.Generator().manual_seed(2)
    k = torch.randn(1, 20, 20, dtype=torch.complex64, generator=g, requires_grad=True)
    got = ifft2c_magnitude(k, coil_dim=0)
    assert got.requires_grad
    torch.testing.assert_close(got, ifft2c(k)[0].abs(), rtol=1e-5, atol=1e-6)
    got.sum().backward()
    assert torch.isfinite(torch.view_as_real(k.grad)).all()


def test_alternating_sign_is_the_half_shift_modulation():
    x = torch.randn(16, dtype=torch.complex64)
    torch.testing.assert_close(torch.fft.ifft(torch.roll(x, 8)), torch.fft.ifft(x) * alternating_sign(16))
    assert alternating_sign(5).tolist() == [1, -1, 1, -1, 1]
    np.testing.assert_array_equal(alternating_sign(4).numpy().dtype, np.float32)
