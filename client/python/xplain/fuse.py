"""The fused form of contract v1 (proto/ingest.md, "The fused form"):
per layer the head means the daemon's methods need, instead of every head.

    f = fuse(attn, grad)        # numpy arrays or torch tensors [B, L, H, n, n]
    pub.send(f)                 # a Publisher sends it as fattn/fgrad/...

For torch tensors everything is computed on the tensors' own device (a
GPU does it in microseconds) and only the fused arrays, H times smaller,
are copied to the host: `fuse(...)` returns numpy arrays; `fuse_torch`
keeps torch tensors on the device (call `.to_host()` later).

The head means are summed in head order in float32 and scaled by
float32(1/H), exactly as the daemon sums the full form, so explaining the
fused form gives what explaining the full one gives, bit for bit in f32.
The head statistics are summed in float64.
"""
from typing import Any, Optional

import numpy as np

__all__ = ["Fused", "fuse", "fuse_numpy", "fuse_targets", "fuse_torch", "fuse_torch_layers"]


class Fused:
    """One message's worth of fused trades.

    fattn            float32 [B, L, n, n]   M = mean_h A
    fgrad            float32 [B, L, n, n]   P = mean_h max(0, G A), or None
    fgrad_signed     float32 [B, L, n, n]   S = mean_h G A, or None
    head_importance  float32 [B, L, H]      |sum_ij A G|, or None (with fgrad)
    head_confidence  float32 [B, L, H]      mean_i max_j A
    H                heads the means were taken over

    With several targets per trade (fuse_targets) fgrad and fgrad_signed
    are [B, T, L, n, n] and head_importance [B, T, L, H], target t's
    block computed from its own gradient (the wire's layout with
    `targets`); T is then that count, else None.

    Arrays are numpy, or torch tensors for a Fused from fuse_torch (until
    to_host()). Indexing with a slice gives the trades of that slice.
    """
    __slots__ = ("fattn", "fgrad", "fgrad_signed", "head_importance", "head_confidence", "H")

    def __init__(self, fattn: Any, head_confidence: Any, fgrad: Any = None,
                 head_importance: Any = None, fgrad_signed: Any = None, H: Optional[int] = None) -> None:
        self.fattn, self.fgrad, self.fgrad_signed = fattn, fgrad, fgrad_signed
        self.head_importance, self.head_confidence = head_importance, head_confidence
        self.H = int(H if H is not None else head_confidence.shape[-1])
        if fattn.ndim == 3:
            self.fattn = fattn[None]
            for k in ("fgrad", "fgrad_signed", "head_importance", "head_confidence"):
                v = getattr(self, k)
                if v is not None:
                    setattr(self, k, v[None])
        if self.fattn.ndim != 4 or self.fattn.shape[2] != self.fattn.shape[3]:
            raise ValueError("fattn must be [B,L,n,n] or [L,n,n], got shape %s" % (tuple(self.fattn.shape),))
        B, L, n, _ = self.fattn.shape
        if tuple(self.head_confidence.shape) != (B, L, self.H):
            raise ValueError("head_confidence shape %s, expected %s" % (tuple(self.head_confidence.shape), (B, L, self.H)))
        if (self.fgrad is None) != (self.head_importance is None):
            raise ValueError("fgrad and head_importance go together")
        if self.fgrad_signed is not None and self.fgrad is None:
            raise ValueError("fgrad_signed needs fgrad")
        T = None if self.fgrad is None or self.fgrad.ndim == 4 else int(self.fgrad.shape[1])
        tax = () if T is None else (T,)
        for k in ("fgrad", "fgrad_signed"):
            v = getattr(self, k)
            want = (B,) + tax + (L, n, n)
            if v is not None and tuple(v.shape) != want:
                raise ValueError("%s shape %s, expected %s" % (k, tuple(v.shape), want))
        if self.head_importance is not None and tuple(self.head_importance.shape) != (B,) + tax + (L, self.H):
            raise ValueError("head_importance shape %s, expected %s" % (tuple(self.head_importance.shape), (B,) + tax + (L, self.H)))

    @property
    def T(self) -> Optional[int]:
        """Targets per trade when fgrad has a target axis, else None."""
        return None if self.fgrad is None or self.fgrad.ndim == 4 else int(self.fgrad.shape[1])

    @property
    def B(self) -> int:
        return int(self.fattn.shape[0])

    @property
    def shape(self):
        """(B, L, H, n)."""
        B, L, n, _ = self.fattn.shape
        return int(B), int(L), self.H, int(n)

    def to_host(self) -> "Fused":
        """numpy arrays (a no-op for numpy ones): float32, or float16 where
        the tensors are half already (fuse_torch(half=True))."""
        def h(x):
            if x is None:
                return None
            if hasattr(x, "detach"):
                x = x.detach()
                if x.dtype != __import__("torch").float16:
                    x = x.float()
                return x.cpu().numpy()
            x = np.asarray(x)
            return x if x.dtype in (np.float32, np.float16) else x.astype(np.float32)
        return Fused(h(self.fattn), h(self.head_confidence), h(self.fgrad), h(self.head_importance),
                     h(self.fgrad_signed), self.H)

    def __getitem__(self, s: slice) -> "Fused":
        if not isinstance(s, slice):
            s = slice(s, s + 1)
        g = lambda x: None if x is None else x[s]  # noqa: E731
        return Fused(self.fattn[s], self.head_confidence[s], g(self.fgrad), g(self.head_importance),
                     g(self.fgrad_signed), self.H)


def _head_mean(x, H):
    """sum over axis 2 in head order, in float32, then * float32(1/H)."""
    m = x[:, :, 0].copy() if isinstance(x, np.ndarray) else x[:, :, 0].clone()
    for h in range(1, H):
        m += x[:, :, h]
    m *= np.float32(1.0) / np.float32(H) if isinstance(m, np.ndarray) else _f32_inv(H)
    return m


def _f32_inv(H):
    return float(np.float32(1.0) / np.float32(H))


def fuse_numpy(attn, grad=None, signed: bool = False) -> Fused:
    """numpy [B, L, H, n, n] (or [L, H, n, n]) float arrays -> Fused."""
    a = np.asarray(attn, dtype=np.float32)
    if a.ndim == 4:
        a = a[None]
    if a.ndim != 5 or a.shape[3] != a.shape[4]:
        raise ValueError("attn must be [B,L,H,n,n] or [L,H,n,n], got shape %s" % (a.shape,))
    H = a.shape[2]
    M = _head_mean(a, H)
    conf = a.max(axis=-1).astype(np.float64).mean(axis=-1).astype(np.float32)
    P = S = imp = None
    if grad is not None:
        g = np.asarray(grad, dtype=np.float32)
        if g.ndim == 4:
            g = g[None]
        if g.shape != a.shape:
            raise ValueError("grad shape %s differs from attn shape %s" % (g.shape, a.shape))
        prod = a * g
        # The float32 products summed in double, as the daemon sums them.
        imp = np.abs(prod.reshape(prod.shape[:3] + (-1,)).sum(axis=-1, dtype=np.float64)).astype(np.float32)
        if signed:
            S = _head_mean(prod, H)
        P = _head_mean(np.maximum(prod, np.float32(0), out=prod), H)
    return Fused(M, conf, P, imp, S, H)


def fuse_torch(attn, grad=None, signed: bool = False, half: bool = False) -> Fused:
    """torch [B, L, H, n, n] tensors -> Fused of torch tensors on their
    device (float32; head statistics summed in float64 there). No copy to
    the host: call .to_host() when the arrays are wanted. half=True: the
    head means are rounded to float16 on the device (for an f16 wire: half
    the bytes to copy, no conversion on the host; the head statistics
    stay float32)."""
    a = attn if attn.dim() == 5 else attn[None]
    g = None if grad is None else (grad if grad.dim() == 5 else grad[None])
    if g is not None and g.shape != a.shape:
        raise ValueError("grad shape %s differs from attn shape %s" % (tuple(g.shape), tuple(a.shape)))
    L = a.shape[1]
    return fuse_torch_layers([a[:, l] for l in range(L)],
                             None if g is None else [g[:, l] for l in range(L)], signed, half)


def fuse_torch_layers(attn, grad=None, signed: bool = False, half: bool = False) -> Fused:
    """fuse_torch for a list of L per-layer tensors [B, H, n, n] (as a
    capture holds them): each layer is fused where it is, and only the
    fused results are stacked, never the heads."""
    import torch
    Ms, Ps, Ss, imps, confs = [], [], [], [], []
    with torch.no_grad():
        for l, x in enumerate(attn):
            a = x.detach().float()
            H = a.shape[1]
            inv = _f32_inv(H)
            m = a[:, 0].clone()
            for h in range(1, H):
                m += a[:, h]
            Ms.append(m.mul_(inv))
            confs.append(a.amax(dim=-1).mean(dim=-1, dtype=torch.float64).float())
            if grad is not None:
                prod = a * grad[l].detach().float()
                # The float32 products summed in double, as the daemon sums them.
                imps.append(prod.sum(dim=(-1, -2), dtype=torch.float64).abs().float())
                if signed:
                    s = prod[:, 0].clone()
                    for h in range(1, H):
                        s += prod[:, h]
                    Ss.append(s.mul_(inv))
                prod.clamp_(min=0.0)
                p = prod[:, 0].clone()
                for h in range(1, H):
                    p += prod[:, h]
                Ps.append(p.mul_(inv))
        M = torch.stack(Ms, dim=1)
        conf = torch.stack(confs, dim=1)
        P = torch.stack(Ps, dim=1) if Ps else None
        S = torch.stack(Ss, dim=1) if Ss else None
        imp = torch.stack(imps, dim=1) if imps else None
        if half:
            M, P, S = (None if x is None else x.half() for x in (M, P, S))
    return Fused(M, conf, P, imp, S, int(attn[0].shape[1]))


def fuse_targets(attn, grad, signed: bool = False) -> Fused:
    """Several targets per trade: attn [B, L, H, n, n], grad [B, T, L, H,
    n, n] (gradient t that of target t) -> Fused of numpy arrays whose
    fgrad, fgrad_signed and head_importance carry the target axis; each
    target's block is what fuse(attn, grad[:, t]) gives."""
    T = int(grad.shape[1])
    fs = [fuse(attn, grad[:, t], signed) for t in range(T)]
    st = lambda k: None if getattr(fs[0], k) is None else np.stack([getattr(f, k) for f in fs], axis=1)  # noqa: E731
    return Fused(fs[0].fattn, fs[0].head_confidence, st("fgrad"), st("head_importance"),
                 st("fgrad_signed"), fs[0].H)


def fuse(attn, grad=None, signed: bool = False) -> Fused:
    """numpy arrays or torch tensors [B, L, H, n, n] -> Fused of numpy
    arrays; torch tensors are fused on their device, then copied."""
    if hasattr(attn, "detach") and hasattr(attn, "device"):
        return fuse_torch(attn, grad, signed).to_host()
    return fuse_numpy(attn, grad, signed)
