"""Pre-norm transformer encoder whose attention kernel is a parameter."""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AttentionBackend = Literal["auto", "native", "sdpa", "flash"]
_BACKENDS = ("native", "sdpa", "flash")


def flash_attn_available(device: torch.device | None = None) -> bool:
    """Whether the flash-attn package is importable and a CUDA device is in use."""
    if device is not None and device.type != "cuda":
        return False
    if not torch.cuda.is_available():
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: AttentionBackend) -> str:
    """Turn ``"auto"`` into the fastest backend available; validate the others."""
    if backend == "auto":
        return "flash" if flash_attn_available() else "sdpa"
    if backend not in _BACKENDS:
        raise ValueError(
            f"attention_backend must be one of {('auto',) + _BACKENDS}, got {backend!r}"
        )
    if backend == "flash" and not flash_attn_available():
        raise ImportError(
            "attention_backend='flash' needs the flash-attn package and a CUDA device; "
            "use 'sdpa' (any device) or 'auto'"
        )
    return backend


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with interchangeable kernels sharing one set of weights.

    ``native`` spells the softmax out, ``sdpa`` calls
    :func:`torch.nn.functional.scaled_dot_product_attention` and ``flash`` calls flash-attn's
    kernel on CUDA. The weights do not depend on the kernel, so a checkpoint trained with one
    backend loads under any other.

    Attention weights get no dropout: on CPU it forces SDPA onto its unfused path and draws a
    (batch, heads, length, length) mask per layer, which made a step ten times slower.
    """

    def __init__(self, d_model: int, n_heads: int, backend: str = "sdpa"):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.backend = backend

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend over ``x`` of shape (batch, length, d_model); ``key_padding_mask`` is True at pads."""
        batch, length, d_model = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.n_heads, self.head_dim)
        if self.backend == "flash":
            out = self._flash(qkv, key_padding_mask)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            mask = None
            if key_padding_mask is not None:
                mask = ~key_padding_mask[:, None, None, :]
            if self.backend == "sdpa":
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            else:
                scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
                if mask is not None:
                    scores = scores.masked_fill(~mask, float("-inf"))
                out = scores.softmax(-1) @ v
            out = out.transpose(1, 2)
        return self.out(out.reshape(batch, length, d_model))

    def _flash(self, qkv: torch.Tensor, key_padding_mask: torch.Tensor | None):
        from flash_attn import flash_attn_qkvpacked_func, flash_attn_varlen_qkvpacked_func

        dtype = qkv.dtype
        half = torch.bfloat16 if dtype == torch.float32 else dtype
        if key_padding_mask is None:
            return flash_attn_qkvpacked_func(qkv.to(half)).to(dtype)
        batch, length = key_padding_mask.shape
        keep = ~key_padding_mask
        lengths = keep.sum(1, dtype=torch.int32)
        cu_seqlens = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
        packed = qkv[keep].to(half)
        out = flash_attn_varlen_qkvpacked_func(packed, cu_seqlens, int(lengths.max())).to(dtype)
        full = out.new_zeros(batch, length, *out.shape[1:])
        full[keep] = out
        return full


class TransformerLayer(nn.Module):
    """Pre-norm block: self-attention then a GELU feed-forward, both residual."""

    def __init__(self, d_model: int, n_heads: int, d_hidden: int, dropout: float, backend: str):
        super().__init__()
        self.norm_attention = nn.LayerNorm(d_model)
        self.attention = MultiHeadSelfAttention(d_model, n_heads, backend)
        self.norm_feedforward = nn.LayerNorm(d_model)
        self.feedforward = nn.Sequential(
            nn.Linear(d_model, d_hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_hidden, d_model),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm_attention(x), key_padding_mask))
        return x + self.dropout(self.feedforward(self.norm_feedforward(x)))


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerLayer` with a final LayerNorm."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_layers: int,
        d_hidden: int,
        dropout: float = 0.1,
        backend: AttentionBackend = "auto",
    ):
        super().__init__()
        resolved = resolve_backend(backend)
        self.layers = nn.ModuleList(
            TransformerLayer(d_model, n_heads, d_hidden, dropout, resolved) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    @property
    def backend(self) -> str:
        """The attention kernel in use."""
        return self.layers[0].attention.backend if len(self.layers) else "native"

    def set_backend(self, backend: AttentionBackend) -> None:
        """Switch the attention kernel of every layer (weights are unchanged)."""
        resolved = resolve_backend(backend)
        for layer in self.layers:
            layer.attention.backend = resolved

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, key_padding_mask)
        return self.norm(x)
