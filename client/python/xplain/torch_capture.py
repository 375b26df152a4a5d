"""Capture per-head attention probabilities and their gradients from a
PyTorch model built on torch.nn.MultiheadAttention.

    cap = AttentionCapture(model)            # finds the MHA layers
    c = cap.run(x, target=1)                 # forward + backward
    pub.send(c.attn, grad=c.grad, target=c.target, y=c.prob[:, 1])

How it works: while a capture runs, every attention layer's `forward` is
wrapped so that it is called with need_weights=True and
average_attn_weights=False. MultiheadAttention then returns the per-head
post-softmax matrix that actually multiplies the values ([B, H, n, n],
query rows, key columns) -- the caller still gets what it asked for.
`retain_grad()` is called on that matrix, and after the backward pass of
the target class score its `.grad` is d y_t / d A.

Each layer's tensors are stored under that layer's index (its position
in `layers`, by default the order the modules are registered in the model,
input side first), and read back by index. Nothing depends on the order in
which forward or backward visits the layers (the bug of vit-explain issue
6, where gradients were appended in backward order and so paired with the
wrong layer).

Samples of a batch never interact in attention or layer norm, so the
gradient of the sum over the batch of each sample's target score is each
sample's own gradient: one backward pass serves a whole batch.

Use the model in eval() mode (the default here): in training mode the
returned weights are the dropped-out ones.
"""
import numpy as np
import torch


_MHA_OPTIONAL = ("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights")


class Captured:
    """Result of one capture.

    attn    numpy float32 [B, L, H, n, n]
    grad    numpy float32 [B, L, H, n, n] or None (forward only)
    target  numpy int64 [B] or None
    logits  numpy float32 [B, C] (model output)
    prob    numpy float32 [B, C] (softmax of logits; sigmoid for C == 1)
    score   numpy float32 [B] the differentiated target scores y_t
    """
    __slots__ = ("attn", "grad", "target", "logits", "prob", "score")

    def __init__(self, attn, grad, target, logits, prob, score):
        self.attn, self.grad, self.target = attn, grad, target
        self.logits, self.prob, self.score = logits, prob, score


class AttentionCapture:
    """Attention and gradient capture for nn.MultiheadAttention models.

    model   the torch.nn.Module
    layers  the attention modules in layer order (input side first);
            default: every nn.MultiheadAttention in model.modules() order
    """

    def __init__(self, model, layers=None):
        self.model = model
        self._explicit = layers is not None
        if layers is None:
            layers = [m for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)]
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("no torch.nn.MultiheadAttention module found in the model")
        for m in self.layers:
            if not isinstance(m, torch.nn.MultiheadAttention):
                raise TypeError("layers must be torch.nn.MultiheadAttention modules, got %s" % type(m).__name__)
        self._weights = {}       # layer index -> (module, weights view, tensor used)
        self._installed = False
        self._active = False     # inside run(): calls are recorded

    def _wrap(self, index, module):
        original = type(module).forward

        def forward(*args, **kwargs):
            # Arguments after (query, key, value) may come positionally.
            for name, value in zip(_MHA_OPTIONAL, args[3:]):
                kwargs[name] = value
            args = args[:3]
            if not self._active:
                return original(module, *args, **kwargs)
            want_weights = kwargs.get("need_weights", True)
            want_avg = kwargs.get("average_attn_weights", True)
            kwargs["need_weights"] = True
            kwargs["average_attn_weights"] = False
            out, w = original(module, *args, **kwargs)
            # Which layer this is: its place in the explicit `layers` list,
            # or else the order of the calls in this pass (layer 0 is the
            # first attention the input goes through).
            i = index if index is not None else len(self._weights)
            if i in self._weights or any(m is module for m, _, _ in self._weights.values()):
                raise RuntimeError("an attention layer was called twice in one forward pass; "
                                   "pass layers= explicitly (one module per layer)")
            # MultiheadAttention returns a view ([B, H, n, n]) of the
            # [B*H, n, n] probabilities that multiplied the values; the
            # gradient reaches that base tensor, not the view.
            used = w._base if w._base is not None else w
            if used.requires_grad:
                used.retain_grad()
            self._weights[i] = (module, w, used)
            if not want_weights:
                return out, None
            # What the caller asked for: head-averaged unless it said not.
            return out, (w.mean(dim=-3) if want_avg else w)
        return forward

    def install(self):
        """Wrap the layers' forward (done by run(), or once for many runs by
        `with`). Outside run() the wrapped layers behave exactly as before."""
        if not self._installed:
            for i, m in enumerate(self.layers):
                m.forward = self._wrap(i if self._explicit else None, m)
            self._installed = True

    def remove(self):
        """Restore the layers' own forward."""
        if self._installed:
            for m in self.layers:
                del m.forward
            self._installed = False

    def __enter__(self):
        self.install()
        return self

    def __exit__(self, *exc):
        self.remove()

    def run(self, *inputs, target="pred", grad=True, eval_mode=True, **kwargs):
        """Run the model on `inputs` (batched) and capture.

        target   "pred" (default): each sample's predicted class; an int for
                 all samples; or a sequence of B classes
        grad     False: forward only (attn without gradients)
        eval_mode   put the model in eval() for the capture (restored after)

        The score differentiated for sample b is logits[b, target[b]]; for a
        model with a single output column it is the logit for target 1 and
        its negation for target 0."""
        was_installed, was_training = self._installed, self.model.training
        self.install()
        if eval_mode:
            self.model.eval()
        self._weights = {}
        self._active = True
        try:
            # Grad mode stays on even for a forward-only capture: with grad
            # disabled nn.TransformerEncoderLayer takes a fused fast path
            # that never calls MultiheadAttention.forward.
            with torch.enable_grad():
                out = self.model(*inputs, **kwargs)
                if isinstance(out, (tuple, list)):
                    out = out[0]
                logits = out if out.dim() == 2 else out.reshape(out.shape[0], -1)
                missing = [i for i in range(len(self.layers)) if i not in self._weights]
                if missing:
                    raise RuntimeError("attention layers %s were not called through "
                                       "MultiheadAttention.forward in this pass" % missing)
                B, C = logits.shape
                if isinstance(target, str) and target == "pred":
                    t = (logits[:, 0] > 0).long() if C == 1 else logits.argmax(dim=1)
                else:
                    t = torch.as_tensor(np.broadcast_to(np.asarray(target), (B,)).copy(),
                                        dtype=torch.long, device=logits.device)
                if C == 1:
                    score = torch.where(t == 1, logits[:, 0], -logits[:, 0])
                else:
                    score = logits.gather(1, t[:, None])[:, 0]
                views = [self._weights[i][1] for i in range(len(self.layers))]
                used = [self._weights[i][2] for i in range(len(self.layers))]
                G = None
                if grad:
                    if not all(u.requires_grad for u in used):
                        raise RuntimeError("attention weights do not require grad "
                                           "(model parameters frozen and inputs without grad?)")
                    # Gradients go only to the retained attention tensors
                    # (inputs=): the parameters' .grad are left as they were.
                    score.sum().backward(inputs=used)
                    for i, u in enumerate(used):
                        if u.grad is None:
                            raise RuntimeError("attention layer %d got no gradient from the "
                                               "target score (not on the path to the output?)" % i)
                    # Layer i's gradient is read from layer i's own tensor.
                    G = np.stack([_bhnn(u.grad.reshape(v.shape)) for u, v in zip(used, views)], axis=1)
                A = np.stack([_bhnn(v) for v in views], axis=1)
                lg = logits.detach().cpu().float()
                prob = torch.sigmoid(lg) if C == 1 else torch.softmax(lg, dim=1)
                return Captured(A, G, t.detach().cpu().numpy().astype(np.int64),
                                lg.numpy(), prob.numpy(), score.detach().cpu().float().numpy())
        finally:
            self._active = False
            self._weights = {}
            if eval_mode and was_training:
                self.model.train()
            if not was_installed:
                self.remove()


def _bhnn(t):
    t = t.detach().cpu().float()
    return t.reshape((-1,) + tuple(t.shape[-3:])).numpy()


def capture(model, *inputs, target="pred", grad=True, layers=None, **kwargs):
    """One-shot AttentionCapture(model, layers).run(*inputs, ...)."""
    return AttentionCapture(model, layers).run(*inputs, target=target, grad=grad, **kwargs)
