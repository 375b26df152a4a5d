"""xplain.torch_capture on tabular transformers written the way their
libraries write them, and their explanations through a real xplaind.

Four models, each written in this file in the style of its reference
implementation (no library imported):

- FT-Transformer, rtdl style: its own MultiheadAttention module (q, k, v
  reshaped to [B*H, n, d_head], F.softmax, dropout, product with v),
  returning (x, {"attention_probs": ...}); numeric and categorical
  tokenizers; CLS appended last; first block without attention pre-norm.
  Captured by type (match=), by name pattern, by predicate and with a
  probs= getter; with rtdl's last_layer_query_idx=[-1] the capture refuses
  with a reason (the last layer has only the CLS row).
- SAINT style (column attention, "col"): CLS as the first categorical
  column, per-feature MLP embeddings of the continuous features,
  `sim.softmax(dim=-1)` on [B, H, n, n], PreNorm(Residual(...)) blocks.
- TabTransformer style: categorical tokens only (no CLS), attention
  returning (out, attn), dropout on the probabilities; continuous features
  join after the transformer. Two inputs (x_categ, x_cont).
- scaled_dot_product_attention: blocks calling
  torch.nn.functional.scaled_dot_product_attention with a bool key mask
  and a float bias. Debian 12's PyTorch (1.13) has no such function: the
  formula of PyTorch's documentation, written out below, is installed
  under that name when absent, so the model runs it and the capture
  replaces it exactly as it would the real one.

For each model: the capture equals a capture done by hand (the attention
modules record their probability tensor when the test asks them to, and
torch.autograd.grad gives the gradient of the summed target logits), the
model's outputs are unchanged by the capture, and the daemon's per-trade
vectors of every method equal tests/ref.py (float64) on the hand-captured
tensors. sdpa_reference is checked against the documented formula (and
against PyTorch's own function when there is one) over bool and float
masks, causal, scale, L != S and grouped heads.

Run by ctest with /usr/bin/python3 and XPL_BUILD_DIR / XPL_SOURCE_DIR.
"""
import math
import os
import sys
import time

import numpy as np

SOURCE = os.environ.get("XPL_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("XPL_BUILD_DIR") or os.path.join(SOURCE, "build")
XPLAIND = os.path.join(BUILD, "daemon", "xplaind")
sys.path.insert(0, os.path.join(SOURCE, "client", "python"))
sys.path.insert(0, os.path.join(SOURCE, "tests"))

import pytest                       # noqa: E402
import torch                        # noqa: E402
import torch.nn as nn               # noqa: E402
import torch.nn.functional as F     # noqa: E402

import ref                          # noqa: E402
import xplain                       # noqa: E402
from xplain.torch_capture import AttentionCapture, sdpa_reference   # noqa: E402
from xpltest import wait_until      # noqa: E402

ALL = "rollout,grad_rollout,first_layer,attn_mean,diag,flow"


def assert_close(got, want, rel=1e-5, abs_=1e-12, what=""):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, "%s: shape %s, want %s" % (what, got.shape, want.shape)
    bad = ~(np.abs(got - want) <= rel * np.abs(want) + abs_)
    assert not bad.any(), "%s: %d of %d differ, e.g. %r vs %r" % (
        what, bad.sum(), bad.size, got[bad][:3], want[bad][:3])


# --- PyTorch's documented formula of scaled_dot_product_attention ------------
# From the documentation of torch.nn.functional.scaled_dot_product_attention
# ("efficient implementation equivalent to the following"), with the bias
# sized by broadcasting so that [B, 1, L, S] masks work too.

DOC_RECORD = None    # a list: the formula appends its probabilities (the hand capture)


def doc_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
             enable_gqa=False):
    L, S = query.size(-2), key.size(-2)
    scale_factor = 1 / math.sqrt(query.size(-1)) if scale is None else scale
    bias_shape = (L, S) if attn_mask is None else torch.broadcast_shapes((L, S), attn_mask.shape)
    attn_bias = torch.zeros(bias_shape, dtype=query.dtype, device=query.device)
    if is_causal:
        assert attn_mask is None
        temp_mask = torch.ones(L, S, dtype=torch.bool).tril(diagonal=0)
        attn_bias.masked_fill_(temp_mask.logical_not(), float("-inf"))
        attn_bias.to(query.dtype)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_bias.masked_fill_(attn_mask.logical_not(), float("-inf"))
        else:
            attn_bias = attn_mask + attn_bias
    if enable_gqa:
        key = key.repeat_interleave(query.size(-3) // key.size(-3), -3)
        value = value.repeat_interleave(query.size(-3) // value.size(-3), -3)
    attn_weight = query @ key.transpose(-2, -1) * scale_factor
    attn_weight += attn_bias
    attn_weight = torch.softmax(attn_weight, dim=-1)
    if DOC_RECORD is not None:
        DOC_RECORD.append(attn_weight)
    attn_weight = torch.dropout(attn_weight, dropout_p, train=True)
    return attn_weight @ value


# --- FT-Transformer, rtdl style ------------------------------------------------

class RtdlMultiheadAttention(nn.Module):
    def __init__(self, *, d_token, n_heads, dropout, bias=True):
        super().__init__()
        self.W_q = nn.Linear(d_token, d_token, bias)
        self.W_k = nn.Linear(d_token, d_token, bias)
        self.W_v = nn.Linear(d_token, d_token, bias)
        self.W_out = nn.Linear(d_token, d_token, bias) if n_heads > 1 else None
        self.n_heads = n_heads
        self.dropout = nn.Dropout(dropout) if dropout else None
        self.saved = None                     # the hand capture

    def _reshape(self, x):
        batch_size, n_tokens, d = x.shape
        d_head = d // self.n_heads
        return (x.reshape(batch_size, n_tokens, self.n_heads, d_head).transpose(1, 2)
                .reshape(batch_size * self.n_heads, n_tokens, d_head))

    def forward(self, x_q, x_kv):
        q, k, v = self.W_q(x_q), self.W_k(x_kv), self.W_v(x_kv)
        batch_size = len(q)
        d_head_key = k.shape[-1] // self.n_heads
        d_head_value = v.shape[-1] // self.n_heads
        n_q_tokens = q.shape[1]
        q = self._reshape(q)
        k = self._reshape(k)
        attention_logits = q @ k.transpose(1, 2) / math.sqrt(d_head_key)
        attention_probs = F.softmax(attention_logits, dim=-1)
        if self.saved is not None:
            self.saved.append(attention_probs)
        if self.dropout is not None:
            attention_probs = self.dropout(attention_probs)
        x = attention_probs @ self._reshape(v)
        x = (x.reshape(batch_size, self.n_heads, n_q_tokens, d_head_value).transpose(1, 2)
             .reshape(batch_size, n_q_tokens, self.n_heads * d_head_value))
        if self.W_out is not None:
            x = self.W_out(x)
        return x, {"attention_logits": attention_logits, "attention_probs": attention_probs}


class RtdlFTTransformer(nn.Module):
    """Numeric + categorical feature tokenizer, CLS appended last, pre-norm
    blocks (the first without attention normalisation), ReGLU FFN, head on
    the last token; last_layer_query_idx as rtdl's Transformer."""

    def __init__(self, n_num, cardinalities, d=16, n_blocks=3, n_heads=4, d_ffn=24, n_out=3,
                 last_layer_query_idx=None):
        super().__init__()
        s = d ** -0.5
        self.num_weight = nn.Parameter(torch.empty(n_num, d).uniform_(-s, s))
        self.num_bias = nn.Parameter(torch.empty(n_num, d).uniform_(-s, s))
        self.register_buffer("cat_offsets", torch.tensor([0] + cardinalities[:-1]).cumsum(0))
        self.cat_embeddings = nn.Embedding(sum(cardinalities), d)
        self.cat_bias = nn.Parameter(torch.empty(len(cardinalities), d).uniform_(-s, s))
        self.cls_weight = nn.Parameter(torch.empty(d).uniform_(-s, s))
        self.blocks = nn.ModuleList()
        for i in range(n_blocks):
            layer = nn.ModuleDict({
                "attention": RtdlMultiheadAttention(d_token=d, n_heads=n_heads, dropout=0.2),
                "ffn_linear_first": nn.Linear(d, 2 * d_ffn),
                "ffn_linear_second": nn.Linear(d_ffn, d),
                "ffn_normalization": nn.LayerNorm(d),
                "ffn_dropout": nn.Dropout(0.1),
            })
            if i:
                layer["attention_normalization"] = nn.LayerNorm(d)
            self.blocks.append(layer)
        self.last_layer_query_idx = last_layer_query_idx
        self.head_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_out)

    def forward(self, x_num, x_cat):
        x = [x_num[..., None] * self.num_weight + self.num_bias,
             self.cat_embeddings(x_cat + self.cat_offsets[None]) + self.cat_bias]
        x = torch.cat(x, dim=1)
        x = torch.cat([x, self.cls_weight.view(1, 1, -1).expand(len(x), 1, -1)], dim=1)
        for i, layer in enumerate(self.blocks):
            query_idx = self.last_layer_query_idx if i + 1 == len(self.blocks) else None
            x_residual = layer["attention_normalization"](x) if "attention_normalization" in layer else x
            x_residual, _ = layer["attention"](
                x_residual if query_idx is None else x_residual[:, query_idx], x_residual)
            if query_idx is not None:
                x = x[:, query_idx]
            x = x + x_residual
            x_residual = layer["ffn_normalization"](x)
            a, b = layer["ffn_linear_first"](x_residual).chunk(2, dim=-1)
            x_residual = layer["ffn_linear_second"](layer["ffn_dropout"](a * F.relu(b)))
            x = x + x_residual
        x = x[:, -1]
        return self.head(F.relu(self.head_norm(x)))


# --- SAINT style (column attention) --------------------------------------------

class SaintAttention(nn.Module):
    def __init__(self, dim, heads=4, dim_head=8, dropout=0.1):
        super().__init__()
        inner_dim = dim_head * heads
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
        self.to_out = nn.Linear(inner_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.saved = None

    def forward(self, x):
        h = self.heads
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(t.shape[0], t.shape[1], h, -1).permute(0, 2, 1, 3) for t in (q, k, v))
        sim = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale
        attn = sim.softmax(dim=-1)
        if self.saved is not None:
            self.saved.append(attn)
        out = torch.einsum("bhij,bhjd->bhid", attn, v)
        out = out.permute(0, 2, 1, 3).reshape(out.shape[0], out.shape[2], -1)
        return self.to_out(out)


class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, **kwargs):
        return self.fn(x, **kwargs) + x


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x, **kwargs):
        return self.fn(self.norm(x), **kwargs)


class GEGLU(nn.Module):
    def forward(self, x):
        x, gates = x.chunk(2, dim=-1)
        return x * F.gelu(gates)


def feed_forward(dim, mult=2, dropout=0.1):
    return nn.Sequential(nn.Linear(dim, dim * mult * 2), GEGLU(), nn.Dropout(dropout),
                         nn.Linear(dim * mult, dim))


class SaintStyle(nn.Module):
    """CLS is categorical column 0 (one category), the first token; then the
    other categorical columns, then the continuous ones (one small MLP
    each); col-style transformer; the head reads token 0."""

    def __init__(self, categories, n_cont, dim=16, depth=2, heads=4, n_out=2):
        super().__init__()
        categories = [1] + list(categories)          # the CLS column
        self.register_buffer("offsets", torch.tensor([0] + categories[:-1]).cumsum(0))
        self.embeds = nn.Embedding(sum(categories), dim)
        self.cont_mlps = nn.ModuleList([nn.Sequential(nn.Linear(1, 20), nn.ReLU(), nn.Linear(20, dim))
                                        for _ in range(n_cont)])
        self.layers = nn.ModuleList([nn.ModuleList([
            PreNorm(dim, Residual(SaintAttention(dim, heads=heads))),
            PreNorm(dim, Residual(feed_forward(dim))),
        ]) for _ in range(depth)])
        self.mlpfory = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, n_out))

    def forward(self, x_categ, x_cont):
        x_categ = torch.cat([torch.zeros_like(x_categ[:, :1]), x_categ], dim=1)
        x = self.embeds(x_categ + self.offsets[None])
        cont = torch.stack([mlp(x_cont[:, i:i + 1]) for i, mlp in enumerate(self.cont_mlps)], dim=1)
        x = torch.cat([x, cont], dim=1)
        for attn1, ff1 in self.layers:
            x = attn1(x)
            x = ff1(x)
        return self.mlpfory(x[:, 0, :])


# --- TabTransformer style (categorical tokens only, no CLS) ----------------------

class TabAttention(nn.Module):
    def __init__(self, dim, heads=4, dim_head=8, dropout=0.1):
        super().__init__()
        inner_dim = dim_head * heads
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
        self.to_out = nn.Linear(inner_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.saved = None

    def forward(self, x):
        h = self.heads
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(t.shape[0], t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
        sim = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale
        attn = sim.softmax(dim=-1)
        if self.saved is not None:
            self.saved.append(attn)
        dropped_attn = self.dropout(attn)
        out = torch.einsum("bhij,bhjd->bhid", dropped_attn, v)
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
        return self.to_out(out), attn


class TabTransformerStyle(nn.Module):
    def __init__(self, categories, n_cont, dim=16, depth=3, heads=4, n_out=1):
        super().__init__()
        self.register_buffer("categories_offset", torch.tensor([0] + list(categories[:-1])).cumsum(0))
        self.embeds = nn.Embedding(sum(categories), dim)
        self.layers = nn.ModuleList([nn.ModuleList([
            PreNorm(dim, TabAttention(dim, heads=heads)),
            PreNorm(dim, feed_forward(dim)),
        ]) for _ in range(depth)])
        self.norm = nn.LayerNorm(n_cont)
        self.mlp = nn.Sequential(nn.Linear(dim * len(categories) + n_cont, 32), nn.ReLU(), nn.Linear(32, n_out))

    def forward(self, x_categ, x_cont):
        x = self.embeds(x_categ + self.categories_offset)
        for attn, ff in self.layers:
            attn_out, post_softmax_attn = attn(x)
            x = x + attn_out
            x = ff(x) + x
        x = torch.cat((x.flatten(1), self.norm(x_cont)), dim=-1)
        return self.mlp(x)


# --- a model on scaled_dot_product_attention ----------------------------------

class SdpaBlock(nn.Module):
    def __init__(self, d, heads, float_bias):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.float_bias = float_bias
        self.dropout_p = 0.1

    def forward(self, x, keep):
        B, n, d = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.float_bias:
            # A float mask: a distance bias and -inf for the padded keys.
            pos = torch.arange(n, dtype=x.dtype)
            mask = -0.1 * (pos[:, None] - pos[None, :]).abs()
            mask = mask.masked_fill(~keep[:, None, None, :], float("-inf"))
        else:
            mask = keep[:, None, None, :]                                  # bool [B, 1, 1, n]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout_p if self.training else 0.0)
        x = x + self.proj(o.transpose(1, 2).reshape(B, n, d))
        return x + self.ff(x)


class SdpaModel(nn.Module):
    """CLS first; padded (absent) features masked out of the keys."""

    def __init__(self, n_feat, d=16, heads=2, depth=3):
        super().__init__()
        self.tok_w = nn.Parameter(torch.randn(n_feat, d) * 0.3)
        self.tok_b = nn.Parameter(torch.randn(n_feat, d) * 0.3)
        self.cls = nn.Parameter(torch.randn(d) * 0.3)
        self.blocks = nn.ModuleList([SdpaBlock(d, heads, i % 2 == 1) for i in range(depth)])
        self.head = nn.Linear(d, 2)

    def forward(self, x, present):
        t = torch.cat([self.cls.expand(len(x), 1, -1), x[..., None] * self.tok_w + self.tok_b], dim=1)
        keep = torch.cat([torch.ones_like(present[:, :1]), present], dim=1)
        for b in self.blocks:
            t = b(t, keep)
        return self.head(t[:, 0])


# --- the hand capture -------------------------------------------------------------

def by_hand(model, modules, inputs, target):
    """The attention modules record their probabilities (`saved`, or the
    documented SDPA formula's DOC_RECORD); torch.autograd.grad of the summed
    target logits gives their gradients. Returns attn, grad [B, L, H, n, n]
    and the logits."""
    global DOC_RECORD
    model.eval()
    saved = []
    for m in modules:
        m.saved = saved
    if not modules:
        DOC_RECORD = saved
    try:
        with torch.enable_grad():
            out = model(*inputs)
            t = torch.as_tensor(target)
            score = torch.where(t == 1, out[:, 0], -out[:, 0]) if out.shape[1] == 1 \
                else out.gather(1, t[:, None])[:, 0]
            grads = torch.autograd.grad(score.sum(), saved)
    finally:
        for m in modules:
            m.saved = None
        DOC_RECORD = None
    B = out.shape[0]

    def bhnn(x):
        return x.detach().reshape(B, -1, x.shape[-2], x.shape[-1]).numpy()
    return (np.stack([bhnn(a) for a in saved], 1), np.stack([bhnn(g) for g in grads], 1),
            out.detach().numpy())


def check_capture(name, model, c, modules, inputs, target=None):
    """The capture c equals the hand capture, layer by layer; returns the
    hand-captured (attn, grad)."""
    A, G, out = by_hand(model, modules, inputs, c.target if target is None else target)
    assert c.attn.shape == A.shape, "%s: attn %s, by hand %s" % (name, c.attn.shape, A.shape)
    assert_close(c.attn, A, rel=1e-6, abs_=1e-7, what=name + " attention")
    scale = float(np.abs(G).max())
    assert scale > 0, name + ": zero gradients by hand"
    assert_close(c.grad, G, rel=1e-5, abs_=1e-6 * scale, what=name + " gradients")
    assert_close(c.logits, out, rel=1e-5, abs_=1e-6, what=name + " logits")
    L = A.shape[1]
    for l1 in range(L):          # a wrong pairing of gradients with layers would show
        for l2 in range(l1 + 1, L):
            assert not np.allclose(c.grad[:, l1], c.grad[:, l2], rtol=1e-2), "%s: layers %d, %d" % (name, l1, l2)
    assert all("forward" not in vars(m) for m in model.modules()), name + ": forward left patched"
    return A, G


def unchanged(name, model, inputs, cap):
    """The model's output with the capture installed (inside run()) equals
    its plain output to float rounding, and nothing stays patched."""
    model.eval()
    with torch.no_grad():
        plain = model(*inputs).numpy()
    c = cap.run(*inputs, grad=False)
    assert_close(c.logits, plain, rel=1e-5, abs_=1e-6, what=name + " output under capture")
    assert "softmax" not in vars(torch.Tensor) and torch.softmax is SOFTMAX and F.softmax is F_SOFTMAX


SOFTMAX, F_SOFTMAX = torch.softmax, F.softmax


# --- the tests ------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _torch_setup():
    assert os.access(XPLAIND, os.X_OK), "xplaind not built at %s" % XPLAIND
    installed = not hasattr(F, "scaled_dot_product_attention")
    if installed:
        # PyTorch < 2.0: the documented formula stands in for the function.
        F.scaled_dot_product_attention = doc_sdpa
    print("torch %s%s" % (torch.__version__, ": documented SDPA formula installed as "
                          "torch.nn.functional.scaled_dot_product_attention" if installed else ""))
    torch.set_num_threads(1)
    yield


@pytest.fixture
def d():
    """A daemon with every method; it must stop cleanly."""
    with xplain.Daemon(XPLAIND, methods=ALL) as d:
        yield d
        rc = d.stop()
        assert rc == 0, "daemon exit status %s:\n%s" % (rc, d.log_text())


@pytest.fixture(scope="module")
def cases():
    return models()


def test_sdpa_reference():
    """sdpa_reference against the documented formula (and PyTorch's own
    scaled_dot_product_attention where it exists)."""
    g = torch.Generator().manual_seed(3)
    real = getattr(F, "scaled_dot_product_attention", None)
    real = None if real is doc_sdpa else real
    cases = 0
    for B, H, L, S, E, Ev in ((2, 3, 5, 5, 8, 8), (1, 2, 4, 7, 6, 3), (3, 1, 6, 6, 4, 5)):
        q = torch.randn(B, H, L, E, generator=g, dtype=torch.float64)
        k = torch.randn(B, H, S, E, generator=g, dtype=torch.float64)
        v = torch.randn(B, H, S, Ev, generator=g, dtype=torch.float64)
        bmask = torch.rand(B, 1, L, S, generator=g) > 0.3
        bmask[..., 0] = True                          # no fully masked row
        masks = [None, bmask, bmask[0, 0], torch.randn(L, S, generator=g, dtype=torch.float64),
                 torch.randn(B, H, L, S, generator=g, dtype=torch.float64).masked_fill(~bmask, float("-inf"))]
        for mask in masks:
            for scale in (None, 0.3):
                for causal in ((False, True) if mask is None else (False,)):
                    want = doc_sdpa(q, k, v, mask, 0.0, causal, scale)
                    got = sdpa_reference(q, k, v, mask, 0.0, causal, scale)
                    assert_close(got.numpy(), want.numpy(), rel=1e-12, abs_=1e-12,
                                 what="sdpa B%d L%d S%d mask %s scale %s causal %s" % (
                                     B, L, S, None if mask is None else (mask.dtype, tuple(mask.shape)),
                                     scale, causal))
                    if real is not None:
                        kw = {} if scale is None else {"scale": scale}
                        assert_close(got.numpy(), real(q, k, v, attn_mask=mask, is_causal=causal, **kw).numpy(),
                                     rel=1e-9, abs_=1e-9, what="sdpa against torch's own")
                    cases += 1
    # Grouped heads (enable_gqa): key/value heads repeated.
    q = torch.randn(2, 4, 5, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 5, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, 5, 8, generator=g, dtype=torch.float64)
    assert_close(sdpa_reference(q, k, v, enable_gqa=True).numpy(),
                 doc_sdpa(q, k, v, enable_gqa=True).numpy(), rel=1e-12, abs_=1e-12, what="gqa")
    # Probabilities recorded: rows sum to 1, masked keys get 0.
    rec = []
    sdpa_reference(q, q, q, attn_mask=torch.tensor([True, True, False, True, True]), _record=rec.append)
    assert rec[0].shape == (2, 4, 5, 5) and torch.allclose(rec[0].sum(-1), torch.ones(2, 4, 5, dtype=torch.float64))
    assert (rec[0][..., 2] == 0).all()
    for bad in (dict(dropout_p=0.1), dict(is_causal=True, attn_mask=torch.ones(5, 5, dtype=torch.bool))):
        try:
            sdpa_reference(q, q, q, **bad)
        except ValueError:
            pass
        else:
            raise AssertionError("sdpa_reference accepted %s" % bad)
    print("  %d mask/scale/causal cases%s" % (cases, "" if real is None else ", and against torch's own"))


def tab_inputs(g, B, cards, n_cont):
    x_cat = torch.stack([torch.randint(0, c, (B,), generator=g) for c in cards], dim=1)
    return x_cat, torch.randn(B, n_cont, generator=g)


def models():
    """(name, model, inputs, capture, hand-capture modules, tokens, cls)"""
    g = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    out = []

    cards = [3, 5]
    m = RtdlFTTransformer(n_num=4, cardinalities=cards)
    x_num, x_cat = torch.randn(5, 4, generator=g), tab_inputs(g, 5, cards, 0)[0]
    mods = [b["attention"] for b in m.blocks]
    toks = ["num%d" % i for i in range(4)] + ["cat%d" % i for i in range(2)] + ["CLS"]
    out.append(("ftt_rtdl", m, (x_num, x_cat), AttentionCapture(m, match=RtdlMultiheadAttention),
                mods, toks, 6))

    cards = [4, 3, 6]
    m = SaintStyle(cards, n_cont=3)
    ins = tab_inputs(g, 6, cards, 3)
    toks = ["CLS"] + ["cat%d" % i for i in range(3)] + ["cont%d" % i for i in range(3)]
    out.append(("saint", m, ins, AttentionCapture(m, match="layers.*.0.fn.fn"),
                [l[0].fn.fn for l in m.layers], toks, 0))

    cards = [3, 4, 2, 5, 3]
    m = TabTransformerStyle(cards, n_cont=2)
    ins = tab_inputs(g, 4, cards, 2)
    out.append(("tabtransformer", m, ins,
                AttentionCapture(m, match=lambda name, mod: type(mod).__name__ == "TabAttention"),
                [l[0].fn for l in m.layers], ["cat%d" % i for i in range(5)], -1))

    m = SdpaModel(5)
    x = torch.randn(4, 5, generator=g)
    present = torch.rand(4, 5, generator=g) > 0.25
    out.append(("sdpa", m, (x, present), AttentionCapture(m), [],
                ["CLS"] + ["f%d" % i for i in range(5)], 0))
    return out


def test_captures(cases):
    """Every model: the capture equals the hand capture, the outputs are
    unchanged, for "pred" and for explicit targets; batch independence."""
    for name, model, inputs, cap, mods, toks, cls in cases:
        model.train()
        c = cap.run(*inputs)
        assert model.training, name + ": training mode not restored"
        assert all(p.grad is None for p in model.parameters()), name + ": parameter .grad touched"
        B = inputs[0].shape[0]
        assert c.attn.shape[0] == B and c.attn.shape[3] == len(toks), (name, c.attn.shape)
        assert np.array_equal(c.target, c.logits[:, 0] > 0 if c.logits.shape[1] == 1 else c.logits.argmax(1))
        check_capture(name, model, c, mods, inputs)
        C = max(2, c.logits.shape[1])
        tgt = [(b + 1) % C for b in range(B)]
        check_capture(name + " (given targets)", model, cap.run(*inputs, target=tgt), mods, inputs, tgt)
        unchanged(name, model, inputs, cap)
        one = cap.run(*(x[1:2] for x in inputs), target=tgt[1])
        full = cap.run(*inputs, target=tgt)
        assert_close(one.attn[0], full.attn[1], rel=1e-5, abs_=1e-7, what=name + " single vs batch attn")
        sc = float(np.abs(full.grad).max())
        assert_close(one.grad[0], full.grad[1], rel=1e-4, abs_=1e-6 * sc, what=name + " single vs batch grad")
        print("  %-15s L=%d H=%d n=%d cls=%d" % ((name,) + c.attn.shape[1:4] + (cls,)))


def test_ways_to_name_layers():
    """rtdl's attention named by type, name glob, regex, predicate, list,
    explicit layers, and a probs= getter (attribute or function): the same
    capture. Misuse is refused with a reason."""
    import re
    torch.manual_seed(5)
    m = RtdlFTTransformer(n_num=3, cardinalities=[4])
    x = (torch.randn(3, 3), torch.randint(0, 4, (3, 1)))
    mods = [b["attention"] for b in m.blocks]
    want = AttentionCapture(m, match=RtdlMultiheadAttention).run(*x, target=1)
    ways = {
        "glob": dict(match="blocks.*.attention"),
        "regex": dict(match=re.compile(r"blocks\.\d+\.attention")),
        "predicate": dict(match=lambda name, mod: name.endswith(".attention")),
        "list": dict(match=[nn.MultiheadAttention, RtdlMultiheadAttention]),
        "layers": dict(layers=mods),
        "getter": dict(match=RtdlMultiheadAttention, probs=lambda mod, out: out[1]["attention_probs"]),
    }
    for way, kw in ways.items():
        got = AttentionCapture(m, **kw).run(*x, target=1)
        assert np.array_equal(got.attn, want.attn) and np.array_equal(got.grad, want.grad), way

    # Layers named in the reverse order: indices follow the list given.
    rev = AttentionCapture(m, layers=mods[::-1]).run(*x, target=1)
    assert np.array_equal(rev.attn, want.attn[:, ::-1]) and np.array_equal(rev.grad, want.grad[:, ::-1])

    def refused(exc, what, f):
        try:
            f()
        except exc as e:
            assert what in str(e), "%s: %r" % (what, e)
            return
        raise AssertionError("not refused: " + what)

    # rtdl's last_layer_query_idx=[-1]: the last layer has the CLS row only;
    # refused, and with the attribute set to None (as the message says) the
    # same model is captured and its output is unchanged.
    m2 = RtdlFTTransformer(n_num=3, cardinalities=[4], last_layer_query_idx=[-1])
    m2.eval()
    refused(RuntimeError, "last_layer_query_idx",
            lambda: AttentionCapture(m2, match=RtdlMultiheadAttention).run(*x))
    with torch.no_grad():
        short = m2(*x).numpy()
    m2.last_layer_query_idx = None
    c2 = AttentionCapture(m2, match=RtdlMultiheadAttention).run(*x)
    assert_close(c2.logits, short, rel=1e-5, abs_=1e-6, what="rtdl without the last-layer shortcut")
    # Nothing matched: refused at once with sdpa=False, else at the capture.
    refused(ValueError, "selected no module", lambda: AttentionCapture(m, match="nothing.*", sdpa=False))
    refused(RuntimeError, "no scaled_dot_product_attention call was seen",
            lambda: AttentionCapture(m).run(*x))
    # SDPA support is decided at the capture: a function installed after the
    # AttentionCapture was made is replaced all the same.
    sm = SdpaModel(3)
    xs = (torch.randn(2, 3), torch.ones(2, 3, dtype=torch.bool))
    installed = F.scaled_dot_product_attention
    del F.scaled_dot_product_attention
    try:
        cap = AttentionCapture(sm)
        refused(RuntimeError, "has no scaled_dot_product_attention", lambda: AttentionCapture(m).run(*x))
        refused(RuntimeError, "does not exist", lambda: AttentionCapture(sm, sdpa=True).run(*xs))
    finally:
        F.scaled_dot_product_attention = installed
    assert cap.run(*xs).attn.shape == (2, 3, 2, 4, 4)
    # A module with two softmax calls, without probs=; a matched module
    # the forward pass never calls.
    class TwoSoftmax(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.unused = nn.Linear(4, 4)

        def forward(self, h):
            s = h @ self.lin(h).transpose(1, 2)
            return ((s.softmax(-1) + F.softmax(2 * s, dim=-1)) @ h)[:, 0]
    refused(RuntimeError, "expected exactly one", lambda: AttentionCapture(
        TwoSoftmax(), match=TwoSoftmax, sdpa=False).run(torch.randn(2, 3, 4)))
    t2 = TwoSoftmax()
    refused(RuntimeError, "not called", lambda: AttentionCapture(
        t2, layers=[t2, t2.unused], probs=lambda mod, out: torch.ones(2, 3, 3)).run(torch.randn(2, 3, 4)))
    # Nested matches.
    refused(ValueError, "nest", lambda: AttentionCapture(m, match="blocks.*", sdpa=False))
    # A probs getter returning something else.
    refused(RuntimeError, "not a tensor", lambda: AttentionCapture(
        m, match=RtdlMultiheadAttention, probs=lambda mod, out: None).run(*x))
    # SDPA with dropout in eval: refused rather than explained wrongly.
    sm = SdpaModel(3)
    for b in sm.blocks:
        b.training = True            # a model passing dropout_p in eval
    sm.training = True
    cap = AttentionCapture(sm)

    def dropout_in_capture():
        sm.eval()
        for b in sm.blocks:
            b.train()
        cap._capture(lambda: sm(torch.randn(2, 3), torch.ones(2, 3, dtype=torch.bool)), "pred", True)
    refused(ValueError, "dropout_p", dropout_in_capture)
    assert F.scaled_dot_product_attention is doc_sdpa, "SDPA left replaced after an error"


def test_softmax_forms(cases):
    """The softmax spy sees every way of calling softmax (a name bound
    before the capture, nn.Softmax) through its TorchFunctionMode; the
    patching fallback (PyTorch without modes) captures the four models
    exactly as the mode does."""
    from torch import softmax as bound_softmax
    from xplain import torch_capture

    class Forms(nn.Module):
        def __init__(self, form):
            super().__init__()
            self.form, self.qk = form, nn.Linear(4, 8)
            self.sm = nn.Softmax(dim=-1)

        def forward(self, h):
            q, k = self.qk(h).chunk(2, -1)
            s = q @ k.transpose(1, 2)
            p = bound_softmax(s, -1) if self.form == "bound" else self.sm(s)
            return (p @ h)[:, 0]
    h = torch.randn(2, 3, 4)
    for form in ("bound", "module"):
        m = Forms(form)
        c = AttentionCapture(m, match=Forms, sdpa=False).run(h, target=1)
        q, k = m.qk(h).chunk(2, -1)
        assert_close(c.attn[:, 0, 0], torch.softmax(q @ k.transpose(1, 2), -1).detach().numpy(),
                     rel=1e-6, abs_=1e-7, what="softmax " + form)
    assert torch_capture._SoftmaxSpy.use_mode, "this PyTorch has TorchFunctionMode"
    torch_capture._SoftmaxSpy.use_mode = False
    try:
        for name, model, inputs, cap, mods, toks, cls in cases:
            if mods:
                c = cap.run(*inputs)
                check_capture(name + " (patched softmax)", model, c, mods, inputs)
        assert "softmax" not in vars(torch.Tensor) and torch.softmax is SOFTMAX and F.softmax is F_SOFTMAX
    finally:
        torch_capture._SoftmaxSpy.use_mode = True


def test_mha_still():
    """nn.MultiheadAttention models keep working by default, also next to
    SDPA (both in call order)."""
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
            self.sdpa = SdpaBlock(8, 2, False)
            self.head = nn.Linear(8, 1)

        def forward(self, x):
            h, _ = self.mha(x, x, x, need_weights=False)
            h = self.sdpa(h, torch.ones(x.shape[:2], dtype=torch.bool))
            return self.head(h[:, -1])
    torch.manual_seed(2)
    m = Mixed()
    x = torch.randn(3, 4, 8)
    c = AttentionCapture(m).run(x, target=1)
    assert c.attn.shape == (3, 2, 2, 4, 4)
    _, w = m.mha(x, x, x, average_attn_weights=False)
    assert_close(c.attn[:, 0], w.detach().numpy(), rel=1e-6, abs_=1e-7, what="mha layer 0")
    global DOC_RECORD
    DOC_RECORD = []
    m(x)
    assert_close(c.attn[:, 1], DOC_RECORD[0].detach().numpy(), rel=1e-6, abs_=1e-7, what="sdpa layer 1")
    DOC_RECORD = None


def join(d, sub):
    """Publish a probe model until one explanation of it reaches `sub`."""
    probe = xplain.Publisher("zz_probe", connect=d.ingest, tokens=["a", "b"], cls=-1)
    assert probe.wait_subscriber(10), "daemon never subscribed to the probe publisher"
    A = np.full((1, 1, 2, 2), 0.5, np.float32)

    def once():
        probe.send(A)
        x = sub.recv(timeout=0.05)
        return x is not None and x.model == "zz_probe"
    wait_until(once, what="the subscriber to receive a probe explanation")
    while sub.recv(timeout=0.2) is not None:
        pass
    probe.close()


def test_daemon(d, cases):
    """Each model's capture published to the daemon: its explanations equal
    tests/ref.py on the hand-captured tensors, every method, every trade."""
    q = xplain.Client(d.query, timeout=5)
    sub = xplain.Subscriber(d.publish, query=q)
    join(d, sub)
    want = {}
    for name, model, inputs, cap, mods, toks, cls in cases:
        c = cap.run(*inputs)
        A, G = check_capture(name, model, c, mods, inputs)
        pub = xplain.Publisher(name, connect=d.ingest, tokens=toks, cls=cls)
        assert pub.wait_subscriber(10), "the daemon did not subscribe to " + name
        ids = ["%s-%d" % (name, b) for b in range(len(c.target))]
        pub.send(c.attn, grad=c.grad, ids=ids, target=c.target, y=c.target_prob())
        for b, i in enumerate(ids):
            want[(name, i)] = (A[b], G[b], cls, int(c.target[b]))
        pub.close()
    got = {}
    deadline = time.monotonic() + 20
    while len(got) < len(want):
        x = sub.recv(timeout=max(0.0, deadline - time.monotonic()))
        assert x is not None, "explanations: %d of %d, missing %s" % (
            len(got), len(want), sorted(set(want) - set(got))[:5])
        if (x.model, x.id) in want:
            got[(x.model, x.id)] = x
    values = 0
    for key, (A, G, cls, t) in want.items():
        x = got[key]
        exp = ref.methods(A, G, cls, with_flow=True)
        assert set(x.attr) == set(exp), "%s: methods %s" % (key, sorted(x.attr))
        assert x.target == t
        for meth, v in x.attr.items():
            assert_close(v, exp[meth], rel=1e-5, abs_=1e-7, what="%s %s" % (key, meth))
            values += v.size
        names = [tk for j, tk in enumerate(dict((c[0], c[5]) for c in cases)[key[0]]) if j != cls]
        assert x.features == names, (key, x.features)
    print("  %d trades of %d models, %d values equal to the reference" % (len(want), len(cases), values))
    sub.close()
    q.close()
