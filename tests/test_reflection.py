"""Reflection-coefficient denominators: the step-up map against statsmodels, stability for any
parameters, reachability of stable polynomials, and the RTF filter built on them."""

import numpy as np
import pytest
import scipy.signal as ss
import torch
from statsmodels.tsa.statespace.tools import constrain_stationary_univariate, unconstrain_stationary_univariate

from hyena_rtf.modeling.reflection import (
    K_MAX,
    denominator_to_reflection,
    raw_from_reflection,
    reflection_coefficients,
    reflection_poles,
    reflection_to_denominator,
    step_up_reference,
)
from hyena_rtf.modeling.rtf import RTF, graded_decay_radii


def statsmodels_denominator(k: np.ndarray) -> np.ndarray:
    """a of 1 + a_1 z^-1 + ... from partial autocorrelations k, by statsmodels (its squash is
    x / sqrt(1 + x^2) and its AR polynomial is 1 - phi_1 z - ..., so a = -phi)."""
    return -constrain_stationary_univariate(k / np.sqrt(1 - k**2))


def random_stable(rng, order, max_radius):
    """A monic real polynomial (coefficients a_1..a_N) with roots drawn inside the disc."""
    pairs = order // 2
    radii = max_radius * np.sqrt(rng.uniform(0, 1, pairs))
    radii[0] = max_radius
    roots = radii * np.exp(1j * rng.uniform(0, np.pi, pairs))
    roots = np.concatenate([roots, roots.conj(), rng.uniform(-max_radius, max_radius, order % 2)])
    return np.real(np.poly(roots))[1:], roots


def companion_roots(a: np.ndarray) -> np.ndarray:
    return np.roots(np.r_[1.0, a])


@pytest.mark.parametrize("order", [1, 2, 7, 64])
def test_step_up_matches_statsmodels(order):
    rng = np.random.default_rng(order)
    k = np.tanh(rng.normal(0, 1.5, (5, order)))
    a = reflection_to_denominator(torch.from_numpy(k)).numpy()
    ref = np.stack([statsmodels_denominator(row) for row in k])
    np.testing.assert_allclose(a, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    np.testing.assert_allclose(step_up_reference(torch.from_numpy(k)).numpy(), ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("order,max_radius", [(2, 0.5), (8, 0.99), (16, 0.999), (5, 0.999)])
def test_inverse_map_reaches_random_stable_polynomials(order, max_radius):
    rng = np.random.default_rng(order)
    for _ in range(10):
        a, roots = random_stable(rng, order, max_radius)
        k = denominator_to_reflection(torch.from_numpy(a).unsqueeze(0))
        assert (k.abs() < 1).all()
        # statsmodels' inverse map (its squash inverted) gives the same reflection coefficients.
        x = unconstrain_stationary_univariate(-a)
        np.testing.assert_allclose(k[0].numpy(), x / np.sqrt(1 + x**2), atol=1e-8)
        # Through the trained parameters and back: the same polynomial and the same roots.
        back = reflection_to_denominator(reflection_coefficients(raw_from_reflection(k)))[0].numpy()
        np.testing.assert_allclose(back, a, atol=1e-7 * max(1, np.abs(a).max()))
        got = np.sort_complex(reflection_poles(k)[0].numpy())
        np.testing.assert_allclose(got, np.sort_complex(roots), atol=1e-5)


def test_inverse_map_refuses_unstable_polynomials():
    with pytest.raises(ValueError, match="not strictly stable"):
        denominator_to_reflection(torch.tensor([[-1.7, 0.6]], dtype=torch.float64))  # roots 1.2 and 0.5
    with pytest.raises(ValueError, match="not strictly stable"):
        denominator_to_reflection(torch.tensor([[-2.1, 1.1]], dtype=torch.float64))  # roots 1.1 and 1.0


ADVERSARIAL = {
    "huge positive": lambda n: torch.full((4, n), 1e4),
    "huge negative": lambda n: torch.full((4, n), -1e4),
    "huge alternating": lambda n: torch.tensor([1e4, -1e4]).repeat(n)[:n].expand(4, n).clone(),
    "huge random": lambda n: torch.randn(64, n) * 1e4,
    "random": lambda n: torch.randn(64, n) * 3,
    "last only": lambda n: torch.cat([torch.zeros(4, n - 1), torch.full((4, 1), 50.0)], 1),
}


@pytest.mark.parametrize("order", [1, 8, 64])
@pytest.mark.parametrize("case", list(ADVERSARIAL))
def test_poles_inside_the_unit_circle_for_any_parameters(order, case):
    torch.manual_seed(order)
    raw = ADVERSARIAL[case](order)
    f = RTF(raw.shape[0], order, 128, init="zeros", constraint="reflection")
    with torch.no_grad():
        f.a_raw.copy_(raw)
    k = reflection_coefficients(f.a_raw.double())
    assert (k.abs() < 1).all()  # strictly, even where tanh rounds to 1
    radius = f.poles().abs().max().item()
    # Eigenvalues of a matrix of norm <= 1: at most rounding above 1 where the exact poles are
    # within rounding of the circle (many reflection coefficients at K_MAX).
    assert radius <= 1 + 1e-12
    # The map from parameters to coefficients has finite gradients everywhere (tanh saturates to a
    # zero gradient, it never overflows); the filter's own gain can overflow at the extremes
    # (max |1/A|^2 grows like prod (1 + |k|) / (1 - |k|)), which no parametrisation avoids.
    raw_p = raw.double().requires_grad_()
    a = reflection_to_denominator(reflection_coefficients(raw_p))
    (a / a.detach().abs().clamp_min(1)).sum().backward()
    assert torch.isfinite(raw_p.grad).all()


def test_filter_gradients_are_finite_for_trained_scale_parameters():
    torch.manual_seed(0)
    f = RTF(16, 64, 256, init="xavier", constraint="reflection")
    with torch.no_grad():
        # |k| ~ 0.25 in all 64 orders: max |1/A| ~ 2e3, poles within 1e-6 of the circle. (Random |k| ~ 0.6 in
        # all 64 orders would put gains near 1e15 and overflow fp32: no filter to train with.)
        f.a_raw.normal_(0, 0.3)
    f(torch.randn(2, 256, 16)).square().mean().backward()
    assert torch.isfinite(f.a_raw.grad).all() and torch.isfinite(f.b.grad).all() and torch.isfinite(f.h0.grad).all()


def test_poles_of_moderate_filters_agree_with_numpy_roots_and_stay_inside():
    rng = np.random.default_rng(0)
    f = RTF(16, 12, 256, init="zeros", constraint="reflection")
    with torch.no_grad():
        f.a_raw.copy_(torch.from_numpy(rng.normal(0, 1.0, (16, 12))))
    poles = f.poles().numpy()
    a = f.denominator(torch.float64).detach().numpy()
    for i in range(16):
        np.testing.assert_allclose(np.sort_complex(poles[i]), np.sort_complex(companion_roots(a[i])), atol=1e-8)
    assert np.abs(poles).max() < 1


def test_zero_parameters_are_the_impulse_init():
    f = RTF(4, 8, 64, init="zeros", constraint="reflection", decay=None)
    assert torch.equal(f.denominator(), torch.zeros(4, 8))
    assert torch.allclose(f.kernel(), torch.nn.functional.pad(torch.ones(4, 1), (0, 63)))


def test_gradients_of_the_step_up_against_autograd_of_the_plain_recursion():
    k = torch.tanh(torch.randn(3, 6, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(reflection_to_denominator, (k,))
    assert torch.autograd.gradgradcheck(reflection_to_denominator, (k,))
    g = torch.randn(3, 6, dtype=torch.float64)
    (fast,) = torch.autograd.grad(reflection_to_denominator(k), k, g)
    (plain,) = torch.autograd.grad(step_up_reference(k), k, g)
    torch.testing.assert_close(fast, plain)


@pytest.mark.parametrize("constraint", ["reflection", "sections"])
def test_stable_filters_match_lfilter_in_both_modes(constraint):
    """A trained-looking stable filter (reflection coefficients or second-order sections): forward,
    prefill and step against scipy's lfilter of the filter's own denominator and the numerator
    read off its kernel."""
    torch.manual_seed(1)
    f = RTF(6, 10, 64, init="xavier", constraint=constraint).double()
    with torch.no_grad():
        f.a_raw.normal_(0, 1.0)
    u = torch.randn(2, 64, 6, dtype=torch.float64)
    num, den = f.to_transfer_function()
    np.testing.assert_allclose(den[:, 1:].numpy(), f.denominator(torch.float64).detach().numpy(), atol=1e-12)
    ref = np.stack([np.stack([ss.lfilter(num[i].numpy(), den[i].numpy(), u[b, :, i].numpy()) for i in range(6)], -1)
                    for b in range(2)])
    np.testing.assert_allclose(f(u).detach().numpy(), ref, atol=1e-9 * np.abs(ref).max())
    y, state = f.prefill(u[:, :40])
    ys = []
    for t in range(40, 64):
        y_t, state = f.step(u[:, t], state)
        ys.append(y_t)
    np.testing.assert_allclose(torch.stack(ys, 1).detach().numpy(), ref[:, 40:], atol=1e-9 * np.abs(ref).max())


def test_from_transfer_function_with_reflection_constraint():
    b, a = ss.cheby1(6, 1.0, 0.1)
    f = RTF.from_transfer_function(b, a, l_max=200, constraint="reflection")
    g = RTF.from_transfer_function(b, a, l_max=200)
    np.testing.assert_allclose(f.kernel().detach().numpy(), g.kernel().detach().numpy(), atol=1e-10)
    impulse = np.zeros(200)
    impulse[0] = 1.0
    np.testing.assert_allclose(f.kernel()[0].detach().numpy(), ss.lfilter(b, a, impulse), atol=1e-8)
    with pytest.raises(ValueError, match="not strictly stable"):
        RTF.from_transfer_function([1.0], [1.0, -1.2], l_max=32, constraint="reflection")
    with pytest.raises(ValueError, match="l1_montel"):
        RTF.from_transfer_function(b, a, l_max=200, constraint="l1_montel")


@pytest.mark.parametrize("constraint", ["reflection", "l1_montel", "none"])
def test_graded_decay_init_places_one_pole_per_channel(constraint):
    f = RTF(8, 16, 256, init="xavier", constraint=constraint, decay=(0.3, 1.5))
    radii = f.poles().abs().max(-1).values
    expected = graded_decay_radii(8, 256, 0.3, 1.5)
    torch.testing.assert_close(radii, expected, atol=1e-5, rtol=0)
    # The window of the implicit filter: e^(-rate t / l_max) reaches 1e-2 at 0.3 and 1.5 l_max.
    assert expected[0] ** (0.3 * 256) == pytest.approx(1e-2, rel=1e-6)
    assert expected[-1] ** (1.5 * 256) == pytest.approx(1e-2, rel=1e-6)
    # One real pole, the rest at zero: 1/A is the geometric decay r^t.
    a = f.denominator(torch.float64).detach()
    assert torch.allclose(a[:, 1:], torch.zeros_like(a[:, 1:]), atol=1e-7)
    torch.testing.assert_close(-a[:, 0], expected, atol=1e-6, rtol=0)


def test_h0_init_options_and_identical_draws():
    """h0_init changes only h0: the other parameters see the same random numbers."""
    torch.manual_seed(0)
    one = RTF(8, 4, 32, init="xavier", constraint="reflection", h0_init="one")
    torch.manual_seed(0)
    normal = RTF(8, 4, 32, init="xavier", constraint="reflection", h0_init="normal")
    assert torch.equal(one.h0, torch.ones(8)) and not torch.equal(normal.h0, torch.ones(8))
    assert torch.equal(one.a_raw, normal.a_raw) and torch.equal(one.b, normal.b)
    assert RTF(2, 4, 32, init="zeros").h0_init == "one" and RTF(2, 4, 32).h0_init == "normal"
    with pytest.raises(ValueError, match="h0_init"):
        RTF(2, 4, 32, h0_init="ones")
    with pytest.raises(ValueError, match="decay"):
        RTF(2, 4, 32, decay=(1.5, 0.3))
    assert K_MAX < 1


def test_denominators_batched_over_layers_give_the_same_loss_and_gradients(monkeypatch):
    """The model computes all layers' reflection denominators in one step-up call per forward;
    loss and every gradient equal those of filters that compute their own."""
    from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
    from hyena_rtf.modeling.presets import preset_config

    torch.manual_seed(0)
    net = HyenaRTFForCausalLM(preset_config("hyena_rtf-tiny", vocab_size=64, max_position_embeddings=32, num_hidden_layers=3,
                                            rtf_constraint="reflection", rtf_init="xavier"))
    ids = torch.randint(0, 64, (2, 32))
    calls = []
    real = reflection_to_denominator
    monkeypatch.setattr("hyena_rtf.modeling.rtf.reflection_to_denominator", lambda k: calls.append(k.shape) or real(k))

    def loss_and_grads():
        net.zero_grad()
        loss = net(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()]

    batched = loss_and_grads()
    assert calls == [torch.Size([3 * 64, 8])]  # one call for the three layers
    monkeypatch.setattr(RTF, "prepare_batch", classmethod(lambda cls, filters: None))
    calls.clear()
    alone = loss_and_grads()
    assert len(calls) == 3
    torch.testing.assert_close(batched[0], alone[0], rtol=0, atol=0)
    for g1, g2 in zip(batched[1], alone[1]):
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


def test_default_decay_grades_half_the_denominators():
    """The default filter: the first half of the denominators one real pole each (graded), the
    other half keep their xavier draws (short responses); a third element of decay sets the share."""
    torch.manual_seed(0)
    f = RTF(8, 16, 256)
    assert (f.init, f.constraint, f.decay) == ("xavier", "reflection", (0.3, 1.5, 0.5))
    a = f.denominator(torch.float64).detach()
    torch.testing.assert_close(-a[:4, 0], graded_decay_radii(4, 256, 0.3, 1.5), atol=1e-6, rtol=0)
    assert torch.allclose(a[:4, 1:], torch.zeros(4, 15, dtype=torch.float64), atol=1e-7)
    assert (f.a_raw[4:] != 0).all()  # the drawn half is untouched
    assert f.poles()[4:].abs().max() < f.poles()[:4].abs().max(-1).values.min()
    assert RTF(8, 16, 256, decay=(0.3, 1.5, 0.25)).poles().abs().max(-1).values.gt(0.9).sum() == 2


def test_reflection_parameters_move_high_orders_less():
    """k_m = K tanh(raw_m / m): a unit step in raw_m moves k_m by about 1/m near zero."""
    raw = torch.zeros(1, 64, dtype=torch.float64, requires_grad=True)
    (jac,) = torch.autograd.grad(reflection_coefficients(raw).sum(), raw)
    m = torch.arange(1, 65, dtype=torch.float64)
    torch.testing.assert_close(jac[0], K_MAX / m)
