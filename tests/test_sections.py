"""Second-order-section denominators: coefficients against numpy's polynomial product, poles in
closed form against numpy's roots, stability for any parameters, the RTF filter built on them."""

import numpy as np
import pytest
import scipy.signal as ss
import torch

from hyena_rtf.modeling.rtf import RTF
from hyena_rtf.modeling.sections import raw_from_poles, section_coefficients, sections_poles, sections_to_denominator


def numpy_product(c: np.ndarray, d: np.ndarray, order: int) -> np.ndarray:
    """a_1..a_N of prod_j (1 + c_j z^-1 + d_j z^-2) (the last factor first order when N is odd)."""
    a = np.array([1.0])
    for j in range(len(c)):
        quad = [1.0, c[j], d[j]] if (order % 2 == 0 or j < len(c) - 1) else [1.0, c[j]]
        a = np.polymul(a, quad)
    return a[1:]


@pytest.mark.parametrize("order", [1, 2, 5, 8, 64])
def test_coefficients_and_poles_against_numpy(order):
    rng = np.random.default_rng(order)
    raw = torch.from_numpy(rng.normal(0, 1.5, (4, order)))
    a = sections_to_denominator(raw).numpy()
    c, d = (t.numpy() for t in section_coefficients(raw))
    for r in range(4):
        ref = numpy_product(c[r], d[r], order)
        np.testing.assert_allclose(a[r], ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    poles = sections_poles(raw).numpy()
    if order <= 16:  # numpy's roots of the expanded polynomial are accurate enough here
        for r in range(4):
            np.testing.assert_allclose(np.sort_complex(poles[r]), np.sort_complex(np.roots(np.r_[1.0, a[r]])), atol=1e-6)
    assert np.abs(poles).max() < 1


@pytest.mark.parametrize("order", [2, 7, 64])
def test_any_parameters_are_stable_and_zero_is_the_identity(order):
    for raw in (torch.full((3, order), 1e4), torch.full((3, order), -1e4), torch.randn(32, order) * 1e3):
        assert sections_poles(raw).abs().max() < 1
    assert torch.equal(sections_to_denominator(torch.zeros(2, order)), torch.zeros(2, order))


@pytest.mark.parametrize("order,max_radius", [(2, 0.5), (7, 0.99), (16, 0.999)])
def test_poles_round_trip_through_the_parameters(order, max_radius):
    rng = np.random.default_rng(order)
    pairs = order // 2
    p = max_radius * np.sqrt(rng.uniform(0, 1, pairs)) * np.exp(1j * rng.uniform(0, np.pi, pairs))
    poles = np.concatenate([p, p.conj(), rng.uniform(-max_radius, max_radius, order % 2)])
    raw = raw_from_poles(torch.from_numpy(poles).unsqueeze(0))
    np.testing.assert_allclose(np.sort_complex(sections_poles(raw)[0].numpy()), np.sort_complex(poles), atol=1e-9)
    with pytest.raises(ValueError, match="inside the unit circle"):
        raw_from_poles(torch.tensor([[1.2 + 0j, 0.1 + 0j]]))


def test_gradients():
    raw = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sections_to_denominator, (raw,))
    assert torch.autograd.gradgradcheck(sections_to_denominator, (raw,))


def test_from_transfer_function_and_graded_decay():
    b, a = ss.cheby1(6, 1.0, 0.1)
    f = RTF.from_transfer_function(b, a, l_max=200, constraint="sections")
    impulse = np.zeros(200)
    impulse[0] = 1.0
    # The sections come from the roots of a (poles at radius ~0.99): good to ~1e-7, not to rounding.
    np.testing.assert_allclose(f.kernel()[0].detach().numpy(), ss.lfilter(b, a, impulse), atol=1e-6)
    g = RTF(4, 8, 256, constraint="sections", decay=(0.1, 1.5))
    radii = g.poles().abs().max(-1).values
    assert radii.diff().gt(0).all() and radii.max() < 1
