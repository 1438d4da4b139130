"""Vocabulary-wide log-softmax pieces that stay fast on CPUs.

``exp`` of a float32 below about -87 gives a denormal number, and x86 CPUs compute those on a slow path: on this
project's 2-core CPU ``logsumexp`` over 32 x 49k logits took 20 ms against 5 ms for :func:`log_normalizer`
(``python benchmarks/op_timings.py``). Real logits span well over 87 nats, so every sampling step and every training
forward hit that path. Here each logit is clamped to at most ``FLOOR`` nats below its row's maximum before
``exp``: a token that unlikely (e^-80 ≈ 1.8e-35 of the top token) keeps that weight instead of less, which changes
the normaliser by under 1e-30 relative to its value. The gradients stay those of log-softmax for every token that
could ever be sampled.
"""

from __future__ import annotations

import torch

FLOOR = -80.0


def log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over the last dimension, keeping it (denormal-free; see the module doc).

    >>> log_normalizer(torch.tensor([[0.0, 0.0], [1000.0, -1000.0]]))
    tensor([[6.9315e-01],
            [1.0000e+03]])
    """
    return sampling_weights(logits)[1]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-softmax of ``logits`` at ``tokens`` (one index per row of the leading dimensions).

    >>> token_logprobs(torch.log(torch.tensor([[0.25, 0.75]])), torch.tensor([1]))
    tensor([-0.2877])
    """
    return logits.gather(-1, tokens[..., None])[..., 0] - log_normalizer(logits)[..., 0]


@torch.no_grad()
def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` in nats, per row.

    >>> entropy(torch.zeros(1, 4))  # uniform over 4: log 4
    tensor([1.3863])
    """
    weights, log_norm = sampling_weights(logits)
    return _entropy(logits, weights, log_norm)


def _entropy(logits, weights, log_norm, temperature: float = 1.0):
    """``-sum p log p = log Z - sum p * logit / T``, with ``p = weights / sum(weights)``."""
    return log_norm[..., 0] - (weights * logits).sum(-1) / (temperature * weights.sum(-1))


def sampling_weights(logits: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised probabilities of ``softmax(logits / temperature)`` and the log normaliser, from one ``exp``.

    Without gradients (the sampler) the shift, the temperature, the floor and ``exp`` write one new tensor, in three
    passes over it: a decode step's logits do not stay in the CPU's caches between passes.

    >>> weights, log_norm = sampling_weights(torch.tensor([[0.0, 0.0]]))
    >>> weights.tolist(), round(log_norm.item(), 4)
    ([[1.0, 1.0]], 0.6931)
    >>> weights, log_norm = sampling_weights(torch.tensor([[1.0, 0.0]]), temperature=0.5)  # logits 2 and 0
    >>> weights.tolist(), round(log_norm.item(), 4)
    ([[1.0, 0.1353352814912796]], 2.1269)
    """
    # any shift gives the same normaliser; the max avoids overflow. Kept in float32 (or wider): bfloat16 logits are
    # widened by the first op that reads them, without a copy of their own.
    top = logits.detach().amax(-1, keepdim=True).to(torch.promote_types(logits.dtype, torch.float32))
    if torch.is_grad_enabled() and logits.requires_grad:
        shifted = logits - top if temperature == 1.0 else (logits - top) / temperature
        weights = shifted.clamp(min=FLOOR).exp()
    else:  # (logits - top) / temperature in one pass, then the floor and exp in place
        weights = torch.add(-top / temperature, logits, alpha=1 / temperature).clamp_(min=FLOOR).exp_()
    return weights, top / temperature + weights.sum(-1, keepdim=True).log()


CHUNK_ELEMENTS = 1 << 24  # logits per chunk: 16M floats = 64 MB
# A forward whose logits take at most this many bytes keeps them for its backward, which then skips the head
# matmul that would recompute them (a third of the head's matmul work, the same numbers).
KEEP_LOGITS_BYTES = 512 << 20


def autocast_operand(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as autocast would hand it to a matmul, cast once: the head's chunks would each cast it again
    (a 49k x 576 head, 28 M weights, a dozen times a SmolLM2 SFT step).

    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     autocast_operand(torch.ones(2)).dtype
    torch.bfloat16
    >>> autocast_operand(torch.ones(2)).dtype
    torch.float32
    """
    device = weight.device.type
    if torch.is_autocast_enabled(device) and weight.is_floating_point():
        return weight.to(torch.get_autocast_dtype(device))
    return weight


class _HeadTokenLogprobs(torch.autograd.Function):
    """log softmax(hidden @ weight.T / T)[token], a chunk of rows at a time; the backward recomputes each chunk's
    logits unless the forward kept them (within ``KEEP_LOGITS_BYTES``: the same matmul gives the same numbers)."""

    @staticmethod
    def forward(ctx, hidden, weight, tokens, temperature, with_entropy, backward_follows):
        rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
        logp = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        ent = torch.empty_like(logp) if with_entropy else None
        log_norms = torch.empty_like(logp)
        head = autocast_operand(weight)
        keep = backward_follows and hidden.shape[0] * head.shape[0] * head.element_size() <= KEEP_LOGITS_BYTES
        ctx.kept = [] if keep else None
        for start in range(0, hidden.shape[0], rows):
            chunk = slice(start, start + rows)
            logits = hidden[chunk] @ head.T  # bfloat16 under autocast: widened as sampling_weights reads it
            if keep:
                ctx.kept.append(logits)
            weights, log_norm = sampling_weights(logits, temperature)
            log_norms[chunk] = log_norm[:, 0]
            logp[chunk] = logits.gather(-1, tokens[chunk, None])[:, 0].float() / temperature - log_norm[:, 0]
            if with_entropy:
                ent[chunk] = _entropy(logits, weights, log_norm, temperature)
        ctx.save_for_backward(hidden, weight, tokens, log_norms)
        ctx.temperature, ctx.rows = temperature, rows
        # Autograd runs backward outside any autocast context: the backward's head matmuls (the largest of the
        # update) take the forward's precision explicitly.
        device = hidden.device.type
        ctx.autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        if ent is not None:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, tokens, log_norms = ctx.saved_tensors
        with torch.autocast(hidden.device.type, dtype=ctx.autocast, enabled=ctx.autocast is not None):
            return _HeadTokenLogprobs._backward(ctx, hidden, weight, tokens, log_norms, grad_logp)

    @staticmethod
    def _backward(ctx, hidden, weight, tokens, log_norms, grad_logp):
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        head = autocast_operand(weight)
        kept, ctx.kept = ctx.kept, None  # each chunk's logits are freed as soon as their gradient is taken
        for start in range(0, hidden.shape[0], ctx.rows):
            chunk = slice(start, start + ctx.rows)
            logits = kept.pop(0) if kept else hidden[chunk] @ head.T
            # d logp / d logits = (onehot(token) - softmax(logits / T)) / T, times the incoming gradient. The
            # softmax is one new float32 tensor, then in place: each pass over 49k logits a row costs.
            grad = torch.add(-log_norms[chunk, None], logits, alpha=1 / ctx.temperature).clamp_(min=FLOOR).exp_()
            upstream = (grad_logp[chunk, None] / ctx.temperature).to(grad.dtype)
            grad.mul_(-upstream).scatter_add_(-1, tokens[chunk, None], upstream)
            grad = grad.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[chunk] = grad @ head
            if grad_weight is not None:
                grad_weight += grad.T.float() @ hidden[chunk].float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def head_token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0, with_entropy=False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``tokens`` under ``softmax(hidden @ weight.T / temperature)``, never holding all logits.

    ``hidden`` is ``[..., H]`` (final hidden states), ``weight`` the ``[V, H]`` LM head, ``tokens`` ``[...]``.
    The logits exist a chunk of rows at a time, in forward and again in backward, so a batch of 32 x 128
    completion tokens over a 49k vocabulary needs 64 MB of logits instead of 800 MB per copy.

    >>> hidden, head = torch.eye(2), torch.tensor([[0.0, 0.0], [1.0, 0.0]])  # row 0 -> logits [0, 1]
    >>> logp, _ = head_token_logprobs(hidden, head, torch.tensor([1, 0]))
    >>> [round(x, 4) for x in logp.tolist()]  # log softmax([0, 1])[1], log softmax([0, 0])[0]
    [-0.3133, -0.6931]
    """
    shape = tokens.shape
    backward_follows = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    logp, ent = _HeadTokenLogprobs.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, tokens.reshape(-1), temperature, with_entropy, backward_follows
    )
    return logp.view(shape), None if ent is None else ent.view(shape)
