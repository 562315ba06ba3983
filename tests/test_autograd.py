"""Hand-written backwards of the FFT convolution and the RTF kernel vs autograd of the plain formulas."""

import pytest
import torch

from bench.baselines import reference_fft_conv, reference_kernel
from hyena_rtf.modeling.fftconv import direct_conv, fft_conv
from hyena_rtf.modeling.rtf import RTF


@pytest.mark.parametrize("L,Lk", [(1, 1), (9, 12), (16, 16), (37, 40)])
def test_fft_conv_gradients_match_direct_conv(L, Lk):
    u = torch.randn(2, L, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, Lk, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, L, 3, dtype=torch.float64)
    got = torch.autograd.grad(fft_conv(u, k), (u, k), g)
    ref = torch.autograd.grad(direct_conv(u, k), (u, k), g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    if Lk > L:
        assert got[1][:, L:].abs().max() == 0  # taps past L cannot reach any output


def test_fft_conv_gradcheck_and_second_order():
    u = torch.randn(1, 5, 2, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fft_conv, (u, k))
    assert torch.autograd.gradgradcheck(fft_conv, (u, k))


def test_fft_conv_gradient_for_one_input_only():
    u = torch.randn(2, 10, 4, requires_grad=True)
    k = torch.randn(4, 10)
    g = torch.randn(2, 10, 4)
    (gu,) = torch.autograd.grad(fft_conv(u, k), (u,), g)
    (ref,) = torch.autograd.grad(reference_fft_conv(u, k), (u,), g)
    torch.testing.assert_close(gu, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_a,bidirectional,constraint", [(None, False, "l1_montel"), (2, False, "none"), (None, True, "l1_montel"),
                                                             (None, False, "reflection"), (2, True, "reflection")])
def test_rtf_kernel_gradients_match_autograd_of_the_plain_formula(num_a, bidirectional, constraint):
    f = RTF(4, 5, 24, num_a=num_a, bidirectional=bidirectional, constraint=constraint).double()
    params = list(f.parameters())
    g = torch.randn(f.h0.shape[0], 17, dtype=torch.float64)
    got = torch.autograd.grad(f.kernel(17), params, g)
    ref = torch.autograd.grad(reference_kernel(f, 17), params, g)
    for p, a, b in zip(params, got, ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=lambda m: f"{p.shape}: {m}")


@pytest.mark.parametrize("constraint", ["l1_montel", "reflection"])
def test_rtf_kernel_second_order_gradients(constraint):
    f = RTF(2, 3, 10, num_a=1, constraint=constraint, decay=None).double()  # |a| is not smooth at a = 0
    names = ["a_raw", "b", "h0"] + (["montel_scale"] if constraint == "l1_montel" else [])
    x = torch.randn(1, 8, 2, dtype=torch.float64)

    def out(*values):
        return torch.func.functional_call(f, dict(zip(names, values)), (x,))

    values = tuple(getattr(f, n).detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(out, values)
    assert torch.autograd.gradgradcheck(out, values)
