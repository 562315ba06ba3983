"""Recurrent Hyena-RTF decoding with preallocated state, optionally as one CUDA graph per token.

A recurrent step of the 125M model is a few hundred small kernels (projections, a 3-tap
convolution, two length-N dot products per channel, the MLP, the LM head) over tensors of a few
kilobytes per sequence. On a GPU their launch cost, not their arithmetic, sets the time per token.
The step has fixed shapes and a state of fixed size, which is exactly what a CUDA graph needs:
capture it once for a batch size and every later token is one graph replay.

:class:`RecurrentDecoder` keeps the token, the per-layer states and the logits in static buffers
and writes each step's new state back into them in place. ``use_graph=False`` runs the very same
step function eagerly (the only mode on a CPU, and what the CPU tests exercise); ``use_graph=True``
(CUDA only) captures it and replays. Numerics are those of ``HyenaOperator.step``: the decoder
calls the modules' own step functions and changes no computation.

Typical use, after a prefill through the model's ``HyenaCache``::

    dec = RecurrentDecoder(model, batch_size=B, use_graph=True)
    dec.load(cache.states)                     # state after the prompt
    logits = dec.step(next_tokens)             # (B, V), next_tokens (B, 1)
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hyena import HyenaState

__all__ = ["RecurrentDecoder", "reference_decode"]


class RecurrentDecoder:
    """Token-by-token decoder of a Hyena-RTF ``HyenaRTFForCausalLM`` with static state buffers.

    Args:
        model: a ``HyenaRTFForCausalLM`` in eval mode whose long filters all have a recurrence
            (``hyena_rtf``, ``hyena_s4d``).
        batch_size: number of sequences decoded together (fixed for the life of the decoder).
        use_graph: capture the step as a CUDA graph on the first ``step`` (needs a CUDA model).
        warmup: eager steps run on a side stream before the capture (kernels, cuBLAS workspaces
            and the RTF recurrence coefficients are created there, not inside the graph).
    """

    def __init__(self, model: nn.Module, batch_size: int, use_graph: bool = False, warmup: int = 2):
        config = model.config
        if not model.model.has_recurrence:
            raise ValueError(
                f"RecurrentDecoder needs a mixer whose long filters have a recurrence ('hyena_rtf', "
                f"'hyena_s4d'), got {config.mixer!r}"
            )
        if model.training:
            raise ValueError("RecurrentDecoder needs a model in eval mode (dropout would differ per replay)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = model.lm_head.weight.device
        if use_graph and device.type != "cuda":
            raise ValueError(f"use_graph=True needs a CUDA model, got device {device}")
        self.model, self.batch_size, self.use_graph, self.warmup = model, batch_size, use_graph, warmup
        self.device = device
        self.position = 0  # tokens consumed since the state was loaded or reset
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        with torch.inference_mode():
            self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # (B, 1)
            self.states = [blk.mixer.initial_state(batch_size, device=device) for blk in model.model.layers]
            self.logits: Optional[Tensor] = None  # (B, V) once a step ran

    # ------------------------------------------------------------------ state in / state out
    def reset(self) -> None:
        """Zero state (an empty context)."""
        with torch.inference_mode():
            for s in self.states:
                s.short.zero_()
                for t in s.long:
                    t.zero_()
        self.position = 0

    def load(self, states: Sequence[HyenaState], position: int = 0) -> None:
        """Copy per-layer states (e.g. ``HyenaCache.states`` after a prefill) into the buffers.

        A state of batch 1 is broadcast to every row.
        """
        if len(states) != len(self.states):
            raise ValueError(f"expected {len(self.states)} layer states, got {len(states)}")
        with torch.inference_mode():
            for buf, src in zip(self.states, states):
                buf.short.copy_(src.short.expand_as(buf.short))
                for b, s in zip(buf.long, src.long):
                    b.copy_(s.expand_as(b))
        self.position = position

    def export(self) -> list[HyenaState]:
        """A copy of the current state, one HyenaState per layer."""
        with torch.inference_mode():
            return [HyenaState(s.short.clone(), tuple(t.clone() for t in s.long)) for s in self.states]

    # ------------------------------------------------------------------ the step
    def _step_into_buffers(self) -> Tensor:
        """One token from ``self.tokens``: writes new states in place, returns logits (B, V)."""
        backbone = self.model.model
        x = backbone.embed_dropout(backbone.embed_tokens(self.tokens))  # (B, 1, D)
        if self.model.config.residual_in_fp32:
            x = x.float()
        new_states: list[HyenaState] = []
        for block, state in zip(backbone.layers, self.states):
            x, state = block.step(x, state)  # (B, 1, D)
            new_states.append(state)
        h = backbone.norm_f(x[:, -1].to(backbone.norm_f.weight.dtype))  # (B, D)
        vocab = self.model.config.vocab_size
        logits = F.linear(h, self.model.lm_head.weight[:vocab])  # (B, V): padded rows never scored
        # The new state lands in the same storage as the old one: a graph replay reads and writes
        # fixed addresses. Every layer's new state is computed before this point.
        for buf, new in zip(self.states, new_states):
            buf.short.copy_(new.short)
            for b, n in zip(buf.long, new.long):
                b.copy_(n)
        return logits

    def _capture(self) -> None:
        saved = self.export()  # warm-up and capture advance the state: restore it afterwards
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self._step_into_buffers()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self._step_into_buffers()
        self._graph = graph
        self.load(saved, self.position)

    def step(self, tokens: Tensor) -> Tensor:
        """Consume ``tokens`` (B, 1) or (B,): return logits (B, V) of the next position.

        The returned tensor is the decoder's logits buffer in graph mode: the next step overwrites
        it, so clone it to keep it.
        """
        with torch.inference_mode():
            self.tokens.copy_(tokens.reshape(self.batch_size, 1))
            if not self.use_graph:
                self.logits = self._step_into_buffers()
            else:
                if self._graph is None:
                    self._capture()
                self._graph.replay()
        self.position += 1
        return self.logits


def reference_decode(model: nn.Module, prompt: Tensor, tokens: Tensor) -> Tensor:
    """Slow reference: logits (B, T, V) at the positions of ``tokens`` (B, T) after ``prompt``
    (B, P), from one parallel (FFT) forward over the whole sequence. Needs P + T <= l_max."""
    ids = torch.cat([prompt, tokens], 1)  # (B, P+T)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits  # (B, P+T, V)
    return logits[:, prompt.shape[1] :]
