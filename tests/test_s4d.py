"""S4D long filter: Vandermonde kernel vs its own recurrence, vs scipy's lfilter of the equivalent
rational transfer function, prefill/step vs the parallel forward, bounded memory, gradients."""

import math

import numpy as np
import pytest
import scipy.signal
import torch

from bench.timing import peak_memory
from hyena_rtf.modeling.fftconv import direct_conv
from hyena_rtf.modeling.s4d import S4D, vandermonde, vandermonde_transpose


def make(d_model=3, state_size=8, l_max=64, seed=0, **kwargs) -> S4D:
    torch.manual_seed(seed)
    return S4D(d_model, state_size, l_max, **kwargs).double()


def _modes(f: S4D, channel: int):
    with torch.no_grad():
        z, db, c = f.discretize(torch.complex128)
        return torch.exp(z[channel]).numpy(), (c[channel] * db[channel]).numpy(), f.skip[channel].item()


def parallel_sections(f: S4D, channel: int) -> tuple[float, list[tuple[np.ndarray, np.ndarray]]]:
    """H(z) of a channel as D plus one real second-order section per conjugate pair of modes.

    By hand: r / (1 - p z^-1) + conj(r) / (1 - conj(p) z^-1)
           = (2 Re r - 2 Re(r conj p) z^-1) / (1 - 2 Re p z^-1 + |p|^2 z^-2).
    (The mode with A = -1/2 has a real pole; scipy's invresz would read its pair as a double pole.)
    """
    poles, res, direct = _modes(f, channel)
    sections = [
        (np.array([2 * r.real, -2 * (r * np.conj(p)).real]), np.array([1.0, -2 * p.real, abs(p) ** 2]))
        for p, r in zip(poles, res)
    ]
    return direct, sections


def transfer_function(f: S4D, channel: int) -> tuple[np.ndarray, np.ndarray]:
    """(b, a) in z^-1 of one channel: the sections over a common denominator (polynomial products)."""
    direct, sections = parallel_sections(f, channel)
    a = np.array([1.0])
    for _, a_m in sections:
        a = np.convolve(a, a_m)
    b = direct * a
    for m, (b_m, _) in enumerate(sections):
        rest = np.array([1.0])
        for j, (_, a_j) in enumerate(sections):
            if j != m:
                rest = np.convolve(rest, a_j)
        b = b + np.pad(np.convolve(b_m, rest), (0, len(a) - len(b_m) - len(rest) + 1))
    return b, a


def lfilter_parallel(f: S4D, channel: int, x: np.ndarray) -> np.ndarray:
    direct, sections = parallel_sections(f, channel)
    return direct * x + sum(scipy.signal.lfilter(b, a, x) for b, a in sections)


def step_all(f: S4D, u: torch.Tensor, state=None) -> tuple[torch.Tensor, torch.Tensor]:
    state = f.initial_state(u.shape[0], dtype=u.dtype) if state is None else state
    ys = []
    for t in range(u.shape[1]):
        y, state = f.step(u[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1), state


# ---------------------------------------------------------------------------- kernel
@torch.no_grad()
def test_kernel_is_the_impulse_response_of_the_step_recurrence():
    f = make(l_max=80)
    impulse = torch.zeros(1, 80, 3, dtype=torch.float64)
    impulse[:, 0] = 1.0
    y, _ = step_all(f, impulse)
    torch.testing.assert_close(f.kernel(), y[0].t(), atol=1e-12, rtol=0)


@torch.no_grad()
def test_kernel_and_forward_equal_scipy_lfilter_of_the_transfer_function():
    """One rational transfer function per channel (N = 4: the polynomial form is well conditioned)."""
    f = make(d_model=4, state_size=4, l_max=200)
    k = f.kernel().numpy()
    u = torch.randn(2, 200, 4, dtype=torch.float64)
    y = f(u).numpy()
    impulse = np.zeros(200)
    impulse[0] = 1.0
    for d in range(4):
        b, a = transfer_function(f, d)
        assert len(a) == 5  # N real-coefficient poles: the modes and their conjugates
        h = scipy.signal.lfilter(b, a, impulse)
        np.testing.assert_allclose(k[d], h, atol=1e-8 * np.abs(h).max(), rtol=0)
        for i in range(2):
            ref = scipy.signal.lfilter(b, a, u[i, :, d].numpy())
            np.testing.assert_allclose(y[i, :, d], ref, atol=1e-8 * np.abs(ref).max(), rtol=0)


@pytest.mark.parametrize("state_size,dt", [(8, (1e-3, 1e-1)), (16, (1e-2, 0.5))])
@torch.no_grad()
def test_kernel_and_forward_equal_scipy_lfilter_of_parallel_sections(state_size, dt):
    f = make(d_model=4, state_size=state_size, l_max=300, dt_min=dt[0], dt_max=dt[1])
    k = f.kernel().numpy()
    u = torch.randn(2, 300, 4, dtype=torch.float64)
    y = f(u).numpy()
    impulse = np.zeros(300)
    impulse[0] = 1.0
    for d in range(4):
        h = lfilter_parallel(f, d, impulse)
        np.testing.assert_allclose(k[d], h, atol=1e-11 * np.abs(h).max(), rtol=0)
        for i in range(2):
            ref = lfilter_parallel(f, d, u[i, :, d].numpy())
            np.testing.assert_allclose(y[i, :, d], ref, atol=1e-11 * np.abs(ref).max(), rtol=0)


@torch.no_grad()
def test_blocked_kernel_equals_the_materialised_powers_for_every_block_length():
    f = make(d_model=2, state_size=10, l_max=100)
    ref = f.kernel_reference()
    for block in (1, 3, 7, 10, 64, 100, 500):
        f.block = block
        torch.testing.assert_close(f.kernel(), ref, atol=1e-12, rtol=0, msg=f"block {block}")
    f32 = make(d_model=2, state_size=10, l_max=100).float()
    torch.testing.assert_close(f32.kernel(), f32.kernel_reference(), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_vandermonde_products_equal_explicit_sums():
    torch.manual_seed(1)
    z = torch.complex(-torch.rand(3, 5, dtype=torch.float64) * 0.1, torch.randn(3, 5, dtype=torch.float64))
    w = torch.randn(2, 3, 5, dtype=torch.complex128)
    u = torch.randn(2, 3, 37, dtype=torch.float64)
    powers = torch.stack([torch.exp(z * l) for l in range(37)], -1)  # (3, 5, 37)
    torch.testing.assert_close(vandermonde(w, z, 37, block=6), 2 * (w.unsqueeze(-1) * powers).sum(-2).real)
    torch.testing.assert_close(vandermonde_transpose(u, z, block=6), (u.unsqueeze(-2) * powers).sum(-1))


def test_kernel_memory_stays_below_the_materialised_vandermonde():
    """N = 1024 at L = 4096: the (D, N/2, L) powers alone are 8 D N/2 L bytes; forward + backward of
    the blocked kernel stay far below that, and the measurement does see the materialised route."""
    D, N, L = 2, 1024, 4096
    f = S4D(D, N, L)
    materialised = D * (N // 2) * L * 8  # complex64 powers, 33.5 MB
    grad = torch.randn(D, L)
    params = list(f.parameters())
    blocked = peak_memory(lambda: torch.autograd.grad(f.kernel(), params, grad))
    with torch.no_grad():
        reference = peak_memory(lambda: f.kernel_reference())
    assert blocked < materialised / 8, (blocked, materialised)
    assert reference >= materialised, (reference, materialised)
    with torch.no_grad():
        torch.testing.assert_close(f.kernel(), f.kernel_reference(), atol=2e-5, rtol=0)


def test_gradcheck_kernel_forward_and_prefill():
    f = make(d_model=2, state_size=4, l_max=12, block=5)
    params = list(f.parameters())
    u = torch.randn(1, 12, 2, dtype=torch.float64, requires_grad=True)

    def run(*args):
        return f.kernel(), f(u)

    assert torch.autograd.gradcheck(run, params)
    state = torch.randn(1, 2, 2, dtype=torch.complex128)
    assert torch.autograd.gradcheck(lambda u: f.prefill(u, state)[0], (u,))
    # Batched weights (the incoming state's term and the outgoing state): gradients w.r.t. the
    # parameters are summed over the batch.
    u2 = torch.randn(2, 12, 2, dtype=torch.float64)
    state2 = torch.randn(2, 2, 2, dtype=torch.complex128)

    def outputs_and_state(*p):
        y, x = f.prefill(u2, state2)  # (2, 12, 2), (2, 2, 2) complex
        return y, torch.view_as_real(x)

    assert torch.autograd.gradcheck(outputs_and_state, params)
    # The blocked kernel's gradients equal those of the materialised one.
    g = torch.randn(2, 12, dtype=torch.float64)
    a = torch.autograd.grad(f.kernel(), params, g)
    b = torch.autograd.grad(f.kernel_reference(), params, g)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------- recurrent mode
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-4)])
@torch.no_grad()
def test_prefill_then_step_equals_parallel_forward(dtype, tol):
    f = make(d_model=5, state_size=16, l_max=48).to(dtype)
    u = torch.randn(2, 48, 5, dtype=dtype)
    y_ref = f(u)
    scale = y_ref.abs().max()
    for split in (1, 17, 48):
        y, state = f.prefill(u[:, :split])
        assert state.dtype == (torch.complex128 if dtype == torch.float64 else torch.complex64)
        y_rest, _ = step_all(f, u[:, split:], state) if split < 48 else (y[:, :0], state)
        err = ((torch.cat([y, y_rest], 1) - y_ref).abs().max() / scale).item()
        assert err < tol, (split, err)
    # A direct O(L^2) convolution with the same kernel agrees too.
    assert ((direct_conv(u, f.kernel()) - y_ref).abs().max() / scale).item() < tol


@torch.no_grad()
def test_prefill_beyond_l_max_and_from_a_state_equals_stepping():
    f = make(d_model=3, state_size=6, l_max=16)
    u = torch.randn(2, 70, 3, dtype=torch.float64)  # four chunks and a bit
    y_step, s_step = step_all(f, u)
    y_pre, s_pre = f.prefill(u)
    torch.testing.assert_close(y_pre, y_step, atol=1e-11, rtol=0)
    torch.testing.assert_close(s_pre, s_step, atol=1e-11, rtol=0)
    y1, s1 = f.prefill(u[:, :23])
    y2, s2 = f.prefill(u[:, 23:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_step, atol=1e-11, rtol=0)
    torch.testing.assert_close(s2, s_step, atol=1e-11, rtol=0)


@torch.no_grad()
def test_step_matches_scipy_past_l_max():
    """The recurrence is one system for any length: lfilter over 300 samples with l_max = 20."""
    f = make(d_model=2, state_size=4, l_max=20)
    u = torch.randn(1, 300, 2, dtype=torch.float64)
    y, _ = step_all(f, u)
    for d in range(2):
        b, a = transfer_function(f, d)
        np.testing.assert_allclose(y[0, :, d].numpy(), scipy.signal.lfilter(b, a, u[0, :, d].numpy()), atol=1e-9)
        np.testing.assert_allclose(y[0, :, d].numpy(), lfilter_parallel(f, d, u[0, :, d].numpy()), atol=1e-11)


# ---------------------------------------------------------------------------- parameters
def test_s4d_lin_init_and_stable_poles():
    f = S4D(16, 8, 32, dt_min=1e-3, dt_max=1e-1)
    dt = f.log_dt.exp()
    assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 1e-1 * (1 + 1e-6)
    a = torch.complex(-f.log_neg_a_real.exp(), f.a_imag).detach()
    torch.testing.assert_close(a[3], torch.complex(torch.full((4,), -0.5), math.pi * torch.arange(4.0)))
    radius = f.poles().abs()
    assert radius.max() < 1 and torch.allclose(radius, torch.exp(-0.5 * dt.detach().double()).unsqueeze(-1).expand(-1, 4))
    with torch.no_grad():
        f.log_neg_a_real.fill_(5.0)  # any real value keeps Re A < 0, so |dA| < 1
    assert f.poles().abs().max() < 1


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(state_size=5), "even"), (dict(state_size=0), "even"), (dict(dt_min=0.2, dt_max=0.1), "dt_min"),
     (dict(dropout=1.0), "dropout"), (dict(block=0), "block")],
)
def test_bad_arguments(kwargs, match):
    args = {"d_model": 2, "state_size": 4, "l_max": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        S4D(**args)


def test_bad_inputs():
    f = S4D(3, 4, 16)
    with pytest.raises(ValueError, match="exceeds l_max"):
        f(torch.randn(1, 17, 3))
    with pytest.raises(ValueError, match="kernel length"):
        f.kernel(17)
    with pytest.raises(ValueError, match="state must be complex"):
        f.step(torch.randn(2, 3), torch.zeros(2, 3, 4))


@torch.no_grad()
def test_discretisation_is_zero_order_hold():
    """dA, dB against scipy's cont2discrete(method='zoh') (a matrix exponential of the block
    [[A, B], [0, 0]]) of each channel's continuous diagonal system x' = A x + B u, B = 1."""
    f = make(d_model=3, state_size=6, l_max=8, dt_min=1e-2, dt_max=0.5)
    z, db, _ = f.discretize(torch.complex128)
    a = torch.complex(-f.log_neg_a_real.exp(), f.a_imag)  # (D, M) continuous A
    dt = f.log_dt.exp()
    for d in range(3):
        A = np.diag(a[d].numpy())
        Ad, Bd, *_ = scipy.signal.cont2discrete((A, np.ones((3, 1)), np.ones((1, 3)), np.zeros((1, 1))), dt[d].item(), "zoh")
        np.testing.assert_allclose(np.exp(z[d].numpy()), np.diag(Ad), atol=1e-13)
        np.testing.assert_allclose(db[d].numpy(), Bd[:, 0], atol=1e-13)
        assert np.abs(Ad - np.diag(np.diag(Ad))).max() < 1e-14  # stays diagonal


def test_static_buffer_decoder_runs_s4d_models():
    """The recurrent decoder asks for a recurrence, not for RTF: hyena_s4d decodes through it, and
    its complex states are written back in place, matching one parallel forward."""
    from hyena_rtf.modeling.graph_decode import RecurrentDecoder, reference_decode
    from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
    from hyena_rtf.modeling.presets import preset_config

    torch.manual_seed(0)
    model = HyenaRTFForCausalLM(preset_config("hyena_s4d-tiny", vocab_size=300, max_position_embeddings=64)).eval()
    prompt, tokens = torch.randint(0, 300, (2, 9)), torch.randint(0, 300, (2, 6))
    cache = model.new_cache()
    with torch.inference_mode():
        model(input_ids=prompt, past_key_values=cache, use_cache=True)
    dec = RecurrentDecoder(model, 2)
    dec.load(cache.states, 9)
    got = torch.stack([dec.step(tokens[:, j]).clone() for j in range(6)], 1)
    torch.testing.assert_close(got, reference_decode(model, prompt, tokens), atol=2e-5, rtol=1e-4)
    assert dec.states[0].long[0].dtype == torch.complex64
    hyena = HyenaRTFForCausalLM(preset_config("hyena-tiny", vocab_size=300, max_position_embeddings=64)).eval()
    with pytest.raises(ValueError, match="recurrence"):
        RecurrentDecoder(hyena, 1)
