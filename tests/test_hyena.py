"""Hyena operator: recurrent mode vs parallel mode, parallel mode vs a direct reference."""

import pytest
import torch
import torch.nn.functional as F

from hyena_rtf.modeling.fftconv import direct_conv
from hyena_rtf.modeling.hyena import HyenaOperator
from hyena_rtf.modeling.implicit_filter import ImplicitFilter
from hyena_rtf.modeling.long_filter import LongFilter
from hyena_rtf.modeling.rtf import RTF
from hyena_rtf.modeling.s4d import S4D


def reference_forward(op: HyenaOperator, u: torch.Tensor) -> torch.Tensor:
    """Obvious O(L^2) Hyena: explicit short-conv sum, direct long convolutions, eval mode."""
    B, L, D = u.shape
    z = op.in_proj(u)  # (B, L, C)
    w = op.short_filter.weight.squeeze(1)  # (C, K)
    K = w.shape[1]
    zc = torch.zeros_like(z)
    for t in range(L):
        for j in range(K):  # tap j multiplies z[t - (K-1) + j]
            s = t - (K - 1) + j
            if s >= 0:
                zc[:, t] += w[:, j] * z[:, s]
    zc = zc + op.short_filter.bias
    streams = zc.chunk(op.order + 1, dim=-1)
    v = streams[-1]
    for i in range(op.order - 1):
        gate = streams[op.order - 1 - i]
        v = direct_conv(v * gate, op.filters[i].kernel(L))
    y = v * streams[0]
    if op.mimo_proj is not None:
        y = F.gelu(op.mimo_proj(op.out_norm(y)))
    return op.out_proj(y)


@pytest.mark.parametrize(
    "order,output_rank,filt",
    [(2, None, "rtf"), (3, 4, "rtf"), (2, 4, "implicit"), (3, None, "implicit"), (2, 4, "s4d"), (3, None, "s4d")],
)
@torch.no_grad()
def test_forward_matches_reference(order, output_rank, filt):
    op = HyenaOperator(8, 24, order=order, filter=filt, output_rank=output_rank,
                       filter_kwargs={"state_size": 4} if filt != "implicit" else None).double().eval()
    u = torch.randn(2, 24, 8, dtype=torch.float64)
    torch.testing.assert_close(op(u), reference_forward(op, u), atol=1e-10, rtol=0)


FILTER_KWARGS = {
    "rtf": {"state_size": 6, "init": "xavier", "constraint": "l1_montel"},
    "s4d": {"state_size": 6},
}


@pytest.mark.parametrize("filt", ["rtf", "s4d"])
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
@torch.no_grad()
def test_prefill_then_step_equals_forward(order, dtype, tol, filt):
    op = HyenaOperator(8, 32, order=order, output_rank=4, filter=filt, filter_kwargs=FILTER_KWARGS[filt])
    op = op.to(dtype).eval()
    u = torch.randn(3, 32, 8, dtype=dtype)
    y_ref = op(u)
    for split in (1, 2, 13, 31):
        y, state = op.prefill(u[:, :split])
        ys = [y]
        for t in range(split, 32):
            y_t, state = op.step(u[:, t], state)
            ys.append(y_t.unsqueeze(1))
        err = ((torch.cat(ys, 1) - y_ref).abs().max() / y_ref.abs().max()).item()
        assert err < tol, (split, err)
    # Stepping from the zero state all the way also matches.
    state = op.initial_state(3, dtype=dtype)
    ys = []
    for t in range(32):
        y_t, state = op.step(u[:, t], state)
        ys.append(y_t)
    assert ((torch.stack(ys, 1) - y_ref).abs().max() / y_ref.abs().max()).item() < tol


@pytest.mark.parametrize("filt", ["rtf", "s4d"])
@torch.no_grad()
def test_prefill_beyond_l_max_equals_stepping(filt):
    op = HyenaOperator(6, 16, filter=filt, filter_kwargs={"state_size": 4}).double().eval()
    u = torch.randn(2, 50, 6, dtype=torch.float64)  # three chunks and a bit
    y_pre, st_pre = op.prefill(u)
    state = op.initial_state(2, dtype=torch.float64)
    ys = []
    for t in range(50):
        y_t, state = op.step(u[:, t], state)
        ys.append(y_t)
    torch.testing.assert_close(y_pre, torch.stack(ys, 1), atol=1e-9, rtol=0)
    torch.testing.assert_close(st_pre.short, state.short)
    for a, b in zip(st_pre.long, state.long):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_operator_is_causal():
    op = HyenaOperator(8, 32, order=3).double().eval()
    u = torch.randn(1, 32, 8, dtype=torch.float64, requires_grad=True)
    y = op(u)
    grad = torch.autograd.grad(y[0, 10].sum(), u)[0]
    assert grad[0, 11:].abs().max() < 1e-12  # FFT round-off only
    assert grad[0, :11].abs().max() > 1e-3


def test_implicit_filter_kernel_and_no_recurrence():
    f = ImplicitFilter(4, 64, filter_order=16)
    k = f.kernel()
    assert k.shape == (4, 64) and torch.isfinite(k).all()
    u = torch.randn(2, 40, 4, dtype=torch.float64)
    f = f.double()
    with torch.no_grad():
        torch.testing.assert_close(f(u), direct_conv(u, f.kernel(40)), atol=1e-10, rtol=0)
    with pytest.raises(NotImplementedError, match="no recurrent mode"):
        f.step(u[:, 0], None)
    op = HyenaOperator(4, 16, filter="implicit")
    with pytest.raises(NotImplementedError, match="filter='rtf'"):
        op.prefill(torch.randn(1, 4, 4))


def test_feedthrough_counted_once():
    """With an identity RTF (zeros init) and one long conv, the chain is y = v * x1 * x0 exactly."""
    op = HyenaOperator(4, 16, filter_kwargs={"init": "zeros", "state_size": 3}).double().eval()
    u = torch.randn(2, 16, 4, dtype=torch.float64)
    with torch.no_grad():
        z = op.short_filter(F.pad(op.in_proj(u).transpose(1, 2), (2, 0))).transpose(1, 2)
        x0, x1, v = z.chunk(3, -1)
        torch.testing.assert_close(op(u), op.out_proj(v * x1 * x0), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(order=1), "order"),
        (dict(filter="s4"), "filter"),
        (dict(short_filter_order=0), "short_filter_order"),
        (dict(output_rank=0), "output_rank"),
        (dict(dropout=-0.1), "dropout"),
        (dict(filter_kwargs={"state_size": 16}), "state_size"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        HyenaOperator(4, 16, **kwargs)


def test_bad_inputs():
    op = HyenaOperator(4, 16)
    with pytest.raises(ValueError, match="exceeds l_max"):
        op(torch.randn(1, 17, 4))
    with pytest.raises(ValueError, match="d_model=4"):
        op(torch.randn(1, 8, 3))
    with pytest.raises(ValueError, match="u_t"):
        op.step(torch.randn(1, 1, 4), op.initial_state(1))


class _Moving(LongFilter):
    """A filter defined outside the package: the mean of the current and previous input."""

    has_recurrence = True

    def __init__(self, d_model, l_max, device=None, dtype=None):
        super().__init__()
        self.d_model, self.l_max = d_model, l_max
        self.scale = torch.nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def kernel(self, L=None):
        L = self.l_max if L is None else L
        return F.pad(0.5 * self.scale.unsqueeze(-1).expand(-1, 2), (0, max(L - 2, 0)))[:, :L]

    def forward(self, u):
        return direct_conv(u, self.kernel(u.shape[1]))

    def initial_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.d_model, device=device, dtype=dtype or self.scale.dtype)

    def prefill(self, u, state=None):
        state = self.initial_state(u.shape[0], u.device, u.dtype) if state is None else state
        prev = torch.cat([state.unsqueeze(1), u[:, :-1]], 1)  # (B, T, D)
        return 0.5 * self.scale * (u + prev), u[:, -1]

    def step(self, u_t, state):
        return 0.5 * self.scale * (u_t + state), u_t


@torch.no_grad()
def test_operator_takes_any_long_filter_class_and_its_recurrence():
    """The seam: a LongFilter subclass unknown to the registry runs in parallel and recurrent mode."""
    op = HyenaOperator(4, 12, filter=_Moving).double().eval()
    assert op.filter == "_Moving" and op.has_recurrence
    u = torch.randn(2, 12, 4, dtype=torch.float64)
    y_ref = reference_forward(op, u)
    y, state = op.prefill(u[:, :5])
    ys = [y]
    for t in range(5, 12):
        y_t, state = op.step(u[:, t], state)
        ys.append(y_t.unsqueeze(1))
    torch.testing.assert_close(torch.cat(ys, 1), y_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(op(u), y_ref, atol=1e-12, rtol=0)


def test_recurrence_follows_the_filters_not_their_names():
    assert HyenaOperator(4, 16, filter="rtf", filter_kwargs={"state_size": 3}).has_recurrence
    assert HyenaOperator(4, 16, filter="s4d", filter_kwargs={"state_size": 4}).has_recurrence
    assert not HyenaOperator(4, 16, filter="implicit").has_recurrence
    bi = HyenaOperator(4, 16, filter_kwargs={"state_size": 3, "bidirectional": True})
    assert not bi.has_recurrence
    with pytest.raises(NotImplementedError, match="no recurrent mode"):
        bi.initial_state(1)
    op = HyenaOperator(4, 16, filter=S4D, filter_kwargs={"state_size": 4})
    assert isinstance(op.filters[0], S4D) and op.filters[0].state_size == 4
    assert all(isinstance(f, LongFilter) for f in (RTF(2, 2, 8), ImplicitFilter(2, 8), S4D(2, 2, 8)))
