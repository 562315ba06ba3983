"""FFT long convolution against the direct O(L^2) reference."""

import pytest
import torch

from hyena_rtf.modeling.fftconv import direct_conv, fft_conv, fft_size, polymul


@pytest.mark.parametrize("L", [1, 2, 7, 64, 127, 200])
def test_fft_conv_matches_direct_fp64(L):
    u = torch.randn(3, L, 5, dtype=torch.float64)
    k = torch.randn(5, L + 3, dtype=torch.float64)  # taps past L are ignored
    torch.testing.assert_close(fft_conv(u, k), direct_conv(u, k), rtol=0, atol=1e-10)


@pytest.mark.parametrize("L", [63, 64])
def test_fft_conv_matches_direct_fp32(L):
    u = torch.randn(2, L, 8)
    k = torch.randn(8, L)
    ref = direct_conv(u.double(), k.double())
    err = (fft_conv(u, k).double() - ref).abs().max() / ref.abs().max()
    assert err < 1e-4


def test_fft_conv_runs_in_fp32_under_autocast():
    u = torch.randn(2, 32, 4).bfloat16()
    k = torch.randn(4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fft_conv(u, k)
    assert y.dtype == torch.bfloat16
    ref = direct_conv(u.double(), k.double())
    assert ((y.double() - ref).abs().max() / ref.abs().max()) < 1e-2


def test_fft_conv_is_causal():
    u = torch.randn(1, 50, 3, dtype=torch.float64)
    k = torch.randn(3, 50, dtype=torch.float64)
    u2 = u.clone()
    u2[:, 30] += 1.0
    d = (fft_conv(u2, k) - fft_conv(u, k)).abs()
    assert d[:, :30].max() < 1e-12
    assert d[:, 30:].max() > 1e-3


def test_fft_conv_shape_errors():
    with pytest.raises(ValueError, match="k must have shape"):
        fft_conv(torch.randn(1, 10, 3), torch.randn(4, 10))
    with pytest.raises(ValueError, match="u must have shape"):
        fft_conv(torch.randn(10, 3), torch.randn(3, 10))


def test_fft_size_is_smooth_and_large_enough():
    for n in range(1, 3000, 37):
        m = fft_size(n)
        assert m >= n
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        assert r == 1


def test_polymul_matches_numpy_convolve():
    import numpy as np

    p = torch.randn(3, 7, dtype=torch.float64)
    q = torch.randn(3, 11, dtype=torch.float64)
    out = polymul(p, q, 20)
    for i in range(3):
        ref = np.convolve(p[i].numpy(), q[i].numpy())
        ref = np.pad(ref, (0, 20 - len(ref)))
        assert np.allclose(out[i].numpy(), ref, atol=1e-12)
