"""Exact recurrent mode of the RTF: the companion-form system behind its parallel kernel.

Recurrent mode runs the system in companion (direct form II) form with an N-dimensional state per
channel. Its numerator and feed-through are recovered *without* matrix powers: the kernel taps
``k_0..k_N`` are exact, and ``N(z) = A(z) K(z) mod z^(N+1)`` gives the full numerator of the
system whose first ``l_max`` taps are ``k`` (so tap 0, including the alias, matches too). This is
the correction the original implementation gets wrong twice (it solves the transposed system and
ignores the alias on tap 0).

The state of a channel is the last N values of ``w = u / A(z)``; the output is
``y_t = sum_j c_j w_{t-j} + d u_t``. Prefill filters a prompt with two FFT convolutions per chunk
(the kernel for y, the response of 1/A for w) instead of looping over its positions.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .fftconv import fft_size, polymul
from .rtf_kernel import inverse_impulse_response

__all__ = ["RTFRecurrence"]


class RTFRecurrence:
    """The recurrent mode of :class:`~.rtf.RTF` (``initial_state``, ``step``, ``prefill``), mixed in.

    Kept apart from the parametrisation because it needs only the filter's exact taps: it reads
    from the host ``d_model``, ``state_size``, ``l_max``, ``num_a``, ``bidirectional``, the
    parameters (``a_raw``, ``b``, ``h0``, ``montel_scale``: their versions key the cache), the
    cache dict ``_rec_cache`` (:meth:`reset_recurrence` empties it), and the parallel-mode methods
    ``_kernel_all(L, dtype)`` and ``denominator(dtype)``.
    """

    def reset_recurrence(self) -> None:
        """Forget the cached companion form: the next recurrent call rebuilds it from the current
        coefficients (the cache also notices in-place updates; this is for coefficients replaced
        behind autograd's version counters)."""
        self._rec_cache = {}

    def companion_form(self, dtype: torch.dtype) -> dict:
        """The companion-form system (a, c, d, g) that step and prefill run, whose first l_max taps
        equal ``kernel()``; cached until the coefficients change (public for reference
        implementations that rebuild the recurrence independently).

        a (D, N): denominators per channel; c (D, N): numerator of the strictly proper part;
        d (D,): feed-through; g (D, l_max): impulse response of 1/A(z) (for prefill states).
        Derived in fp64 from the exact kernel taps, then cast to ``dtype``.
        """
        if self.bidirectional:
            raise ValueError("a bidirectional RTF has no recurrent mode: its anti-causal half needs future inputs")
        params = [p for p in (self.a_raw, self.b, self.h0, self.montel_scale) if p is not None]
        key = tuple((p.data_ptr(), p._version) for p in params)
        if self._rec_cache.get("key") != key:
            with torch.no_grad():
                k = self._kernel_all(self.l_max, torch.float64)  # (D, l_max), no dropout
                a = self.denominator(torch.float64).detach()  # (num_a, N)
                den = F.pad(a, (1, 0), value=1.0)  # (num_a, N+1), monic
                group = self.d_model // self.num_a
                den_ch = den.repeat_interleave(group, 0)  # (D, N+1)
                N = self.state_size
                num = polymul(den_ch, k[:, : N + 1], N + 1)  # (D, N+1): A(z) K(z) mod z^(N+1)
                d = k[:, 0]
                c = num[:, 1:] - d.unsqueeze(-1) * den_ch[:, 1:]  # (D, N)
                g = inverse_impulse_response(den, self.l_max).repeat_interleave(group, 0)  # (D, l_max)
            self._rec_cache = {"key": key, torch.float64: {"a": den_ch[:, 1:], "c": c, "d": d, "g": g}}
        if dtype not in self._rec_cache:
            self._rec_cache[dtype] = {n: t.to(dtype) for n, t in self._rec_cache[torch.float64].items()}
        return self._rec_cache[dtype]

    def initial_state(self, batch_size: int, device=None, dtype=None) -> Tensor:
        """Zero state, shape (batch_size, d_model, state_size): the last N values of w = u / A(z)."""
        device = self.b.device if device is None else device
        dtype = torch.promote_types(self.b.dtype, torch.float32) if dtype is None else dtype
        return torch.zeros(batch_size, self.d_model, self.state_size, device=device, dtype=dtype)

    def step(self, u_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One recurrent step: u_t (B, d_model), state (B, d_model, N) -> (y_t, new state).

        Two length-N dot products and a shift per channel: O(N), independent of the position.
        """
        if u_t.dim() != 2 or u_t.shape[-1] != self.d_model:
            raise ValueError(f"u_t must have shape (B, d_model={self.d_model}), got {tuple(u_t.shape)}")
        if state.shape != (u_t.shape[0], self.d_model, self.state_size):
            raise ValueError(
                f"state must have shape (B, d_model, state_size)="
                f"{(u_t.shape[0], self.d_model, self.state_size)}, got {tuple(state.shape)}"
            )
        rec = self.companion_form(state.dtype)
        u = u_t.to(state.dtype)
        y = (state * rec["c"]).sum(-1) + rec["d"] * u  # (B, D)
        w = u - (state * rec["a"]).sum(-1)  # (B, D)
        new_state = torch.cat([w.unsqueeze(-1), state[..., :-1]], -1)  # (B, D, N)
        return y.to(u_t.dtype), new_state

    def prefill(self, u: Tensor, state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Filter a whole prompt and return the state after its last position.

        u (B, T, d_model), any T (chunks of l_max); ``state`` continues from an earlier call.
        Equivalent to ``step`` over every position, but each chunk costs two FFT convolutions.

        Precision: the direct-form state ``w = u / A(z)`` of a filter with slow poles is large, and
        the history's effect on the next chunk is a cancellation of large terms. So the state is
        carried in fp64 across chunks, the history terms are computed in fp64, and the prompt's
        own convolutions use taps derived in fp64 (cast to the working dtype). Measured on orders
        8-12 with poles at radius 0.990-0.995 over three chunks: an all-fp32 route was off by 5.5x
        the output scale, this one by 7e-5, fp32 stepping by 2e-3. A prompt from the zero state that
        fits in one chunk costs what an fp32 prefill costs (once the taps are cached).
        """
        self._check_input(u, None)
        B, T, _ = u.shape
        if state is None:
            state = self.initial_state(B, device=u.device)
        hist = torch.float64 if u.device.type != "mps" else state.dtype  # MPS has no fp64
        x = state.to(hist)  # (B, D, N), carried across chunks in full precision
        ys = []
        for start in range(0, T, self.l_max):
            y, x = self._prefill_chunk(u[:, start : start + self.l_max], x)
            ys.append(y)
        y = torch.cat(ys, 1) if len(ys) > 1 else ys[0]  # (B, T, D)
        return y.to(u.dtype), x.to(state.dtype)

    def _prefill_taps(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Kernel (D, l_max) and 1/A response (D, l_max), both derived in fp64, cast to ``dtype``; cached.

        An fp32 spectral division with poles near the circle loses ~1e-4 of the kernel, enough to
        spoil a prefill against the exact system; fp64 taps rounded to fp32 do not.
        """
        rec = self.companion_form(dtype)  # refreshes the parameter-version key
        cache = self._rec_cache.setdefault("prefill", {})
        if dtype not in cache:
            with torch.no_grad():
                k = self._kernel_all(self.l_max, torch.float64)[: self.d_model]  # (D, l_max)
            cache[dtype] = (k.to(dtype), rec["g"])
        return cache[dtype]

    def _prefill_chunk(self, u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """One chunk (T <= l_max): outputs (B, T, D) in ``x.dtype`` and the next state (B, D, N)."""
        B, T, D = u.shape
        N = self.state_size
        work = torch.promote_types(u.dtype, torch.float32)  # the prompt's own convolutions
        k, g = self._prefill_taps(work)  # (D, l_max) each
        m = min(N, T)
        n = fft_size(2 * T - 1)
        with torch.autocast(device_type=u.device.type, enabled=False):
            # Both convolutions (output and state) filter the same input: one shared rFFT.
            u_f = torch.fft.rfft(u.to(work).transpose(1, 2), n=n)  # (B, D, n//2+1)
            y = torch.fft.irfft(u_f * torch.fft.rfft(k[:, :T], n=n), n=n)[..., :T].to(x.dtype)  # (B, D, T)
            w = torch.fft.irfft(u_f * torch.fft.rfft(g[:, :T], n=n), n=n)[..., :T].to(x.dtype)  # u / A(z)
            if bool(x.any()):
                # The history acts on the future only through w_{-1..-N}: as an extra input
                # e_t = -sum_{k>t} a_k w_{t-k} (t < N) plus a direct output term
                # f_t = sum_{k>t} c_k w_{t-k}. Both cancel large terms, so this part is in x.dtype.
                rec = self.companion_form(x.dtype)
                kx, gx = self._prefill_taps(x.dtype)
                x_rev = x.flip(-1)  # (B, D, N); x[..., j] = w_{-1-j}
                e = -polymul(rec["a"], x_rev, 2 * N - 1)[..., N - 1 : N - 1 + m]  # (B, D, m)
                f = polymul(rec["c"], x_rev, 2 * N - 1)[..., N - 1 : N - 1 + m]  # (B, D, m)
                nh = fft_size(T + m - 1)
                e_f = torch.fft.rfft(e, n=nh)  # (B, D, nh//2+1)
                y = y + torch.fft.irfft(e_f * torch.fft.rfft(kx[:, :T], n=nh), n=nh)[..., :T]
                y[..., :m] += f - rec["d"].unsqueeze(-1) * e
                w = w + torch.fft.irfft(e_f * torch.fft.rfft(gx[:, :T], n=nh), n=nh)[..., :T]
        w_last = w[..., T - m : T].flip(-1)  # (B, D, m): w_{T-1}, ..., w_{T-m}
        new_state = torch.cat([w_last, x[..., : N - m]], -1)  # (B, D, N)
        return y.transpose(1, 2), new_state

    def to_transfer_function(self) -> tuple[Tensor, Tensor]:
        """(num, den), each (d_model, N+1) fp64, of the system that recurrent mode runs.

        ``scipy.signal.lfilter(num[i], den[i], x)`` reproduces channel i of ``step`` exactly and
        channel i of ``forward`` for the first l_max outputs.
        """
        rec = self.companion_form(torch.float64)
        den = F.pad(rec["a"], (1, 0), value=1.0)  # (D, N+1)
        num = torch.cat([rec["d"].unsqueeze(-1), rec["c"]], -1) + rec["d"].unsqueeze(-1) * F.pad(rec["a"], (1, 0))
        return num.clone(), den.clone()
