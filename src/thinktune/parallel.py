"""How several processes train one policy, on PyTorch's own engines (``train.distributed``):

- ``ddp``: torch's ``DistributedDataParallel``. Every process holds the whole model; the gradients are all-reduced
  in DDP's buckets during the backward pass.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) over each decoder layer and the model. At rest every
  process holds 1/world of the weights, their gradients and the optimizer state.

One GRPO update, on either engine, is many forward/backward passes that must sum to a single gradient: the
micro-batches, and with shared prompts one more backward through the prompt pass after all of them. DDP and FSDP
both reduce in the backward of a *synchronised* pass, and the prompt pass's backward comes last, when DDP's reducer
is no longer armed. So every pass but one runs inside :meth:`Parallel.accumulating` (DDP's ``no_sync``, FSDP's
``set_requires_gradient_sync(False)``), and the update's last micro-batch runs synchronised, with its own prompts
(update.py). Both engines average the processes' gradients; the losses are normalised by the whole step's totals,
so :attr:`Parallel.loss_scale` (the process count) makes the average the sum.

Under fsdp the sampler needs whole weights: :meth:`Parallel.gather` all-gathers them once (one all-gather per
layer), and they stay whole through the rollout, the old log-probs and the update's passes until the synchronised
backward reduce-scatters the gradients and drops them (``reshard_after_forward=False``: a forward never gathers
again, so processes may run different numbers of micro-batches). The seconds it took are logged per step.
"""

from __future__ import annotations

import contextlib
import time

import torch

from thinktune.config import ConfigError
from thinktune.distributed import Ranks
from thinktune.modeling import FAST_MODEL_TYPES, base_model, plain_head


class Parallel:
    """One process, or several on DDP/FSDP: what the update and the trainer ask of the engine."""

    sharded = False

    def __init__(self, model, ranks: Ranks):
        self.model, self.ranks = model, ranks
        self.gather_seconds = 0.0  # time spent gathering whole weights since the last :meth:`take_gather_seconds`

    @property
    def loss_scale(self) -> int:
        """What a loss normalised by the whole step's totals is multiplied by before backward: both engines
        average the processes' gradients, and the update is their sum."""
        return self.ranks.world

    def accumulating(self):
        """Inside: backward passes keep their gradients local (the next synchronised pass reduces them all)."""
        return contextlib.nullcontext()

    def gather(self) -> None:
        """Every module holds its whole weights from here until the next synchronised backward (the sampler,
        evaluation and saving read them)."""

    def take_gather_seconds(self) -> float:
        seconds, self.gather_seconds = self.gather_seconds, 0.0
        return seconds

    def whole_state_dict(self) -> dict | None:
        """What ``save_pretrained`` saves (None: the model's own state dict); under fsdp, after :meth:`gather`."""
        return None


class DDP(Parallel):
    """torch's DistributedDataParallel around the decoder stack and the LM head. The trainer's passes call the
    stack itself (:func:`thinktune.modeling.decoder_stack` returns the wrapper), so its forward arms DDP's reducer."""

    def __init__(self, model, ranks: Ranks):
        super().__init__(model, ranks)
        base = base_model(model)
        wrapped = _Stack(base.model, base.get_output_embeddings())
        self.ddp = torch.nn.parallel.DistributedDataParallel(wrapped, broadcast_buffers=False)
        base.__dict__["data_parallel"] = self.ddp  # not a submodule: the model's state dict and modules stay its own

    def accumulating(self):
        return self.ddp.no_sync()


class FSDP(Parallel):
    """FSDP2 over each decoder layer and the whole model (the root group: embeddings, final norm, LM head, tied or
    not)."""

    sharded = True

    def __init__(self, model, ranks: Ranks):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard

        super().__init__(model, ranks)
        base = base_model(model)
        device = next(model.parameters()).device
        mesh = init_device_mesh(device.type, (ranks.world,))
        for layer in base.model.layers:
            fully_shard(layer, mesh=mesh, reshard_after_forward=False)
        fully_shard(base, mesh=mesh, reshard_after_forward=False)
        self.modules = [m for m in base.modules() if isinstance(m, FSDPModule)]
        # The trainer calls the decoder stack, never the model's own forward, which is where FSDP's root would
        # gather its group and set itself up. So the setup runs once here, on one token, and a hook gathers the
        # root group before the stack runs.
        with torch.no_grad():
            base(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
        for module in self.modules:  # the optimizer must hold the shards, not the gathered weights
            module.reshard()
        base.model.register_forward_pre_hook(lambda *_: base.unshard())

    def accumulating(self):
        return _fsdp_accumulating(self.modules)

    def gather(self) -> None:
        began = time.perf_counter()
        for module in self.modules:  # the same order on every process; a module already whole does nothing
            module.unshard()
        self.gather_seconds += time.perf_counter() - began

    def whole_state_dict(self) -> dict:
        # FSDP's own state dict is its shards; after gather() the modules' parameters are the whole tensors
        # (Llama-family models have no persistent buffers).
        return {name: p.detach() for name, p in self.model.named_parameters()}

    def states(self, optimizer) -> dict:
        """The trainable weights' and the optimizer's sharded state dicts, keyed by parameter name (as
        torch.distributed.checkpoint saves and reshards them)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        model_state, optimizer_state = get_state_dict(
            self.model, optimizer, options=StateDictOptions(ignore_frozen_params=True)
        )
        return {"model": model_state, "optimizer": optimizer_state}


class Shards:
    """A GRPO checkpoint's part under fsdp: every process writes its shards of the trainable weights and the
    optimizer's state to ``shards-<step>/`` beside the checkpoint (torch.distributed.checkpoint); the checkpoint
    holds that folder's name. Loading reads them on any number of fsdp processes (DCP reshards)."""

    def __init__(self, engine: FSDP, folder, optimizer):
        self.engine, self.folder, self.optimizer = engine, folder, optimizer
        self.name: str | None = None

    def save(self, step: int) -> None:
        """Every process writes its shards (before process 0 writes the checkpoint that names them)."""
        import torch.distributed.checkpoint as dcp

        self.name = f"shards-{step}"
        dcp.save(self.engine.states(self.optimizer), checkpoint_id=str(self.folder / self.name))

    def state_dict(self) -> dict:
        return {"folder": self.name, "processes": self.engine.ranks.world}

    def load_state_dict(self, state: dict) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        states = self.engine.states(self.optimizer)
        dcp.load(states, checkpoint_id=str(self.folder / state["folder"]))
        set_state_dict(self.engine.model, self.optimizer, model_state_dict=states["model"],
                       optim_state_dict=states["optimizer"],
                       options=StateDictOptions(ignore_frozen_params=True, strict=False))  # fmt: skip


@contextlib.contextmanager
def _fsdp_accumulating(modules):
    for module in modules:
        module.set_requires_gradient_sync(False, recurse=False)
        module.set_reshard_after_backward(False, recurse=False)
    try:
        yield
    finally:
        for module in modules:
            module.set_requires_gradient_sync(True, recurse=False)
            module.set_reshard_after_backward(True, recurse=False)


class _Stack(torch.nn.Module):
    """The decoder stack with the LM head as a registered part, so DDP reduces an untied head's gradient too; its
    forward is the stack's."""

    def __init__(self, stack, head):
        super().__init__()
        self.stack, self.head = stack, head

    def forward(self, *args, **kwargs):
        return self.stack(*args, **kwargs)


def parallel_engine(recipe, model, ranks: Ranks) -> Parallel:
    """The recipe's ``train.distributed`` engine around ``model`` (one process: no engine)."""
    if ranks.world == 1:
        return Parallel(model, ranks)
    if plain_head(model) is None:  # other heads run the model's own forward, which neither engine would see
        model_type = getattr(base_model(model).config, "model_type", "?")
        raise ConfigError(
            f"train.distributed: several processes train Llama-family models with a plain LM head "
            f"({', '.join(FAST_MODEL_TYPES)}); this model is {model_type}"
        )
    return {"ddp": DDP, "fsdp": FSDP}[recipe.train.distributed](model, ranks)


def check_engine(recipe) -> list[str]:
    """What the chosen engine cannot run, as problems naming the field (pipeline.check_distributable)."""
    problems = []
    if recipe.train.distributed == "fsdp":
        if recipe.model.quantize != "none":
            problems.append("train.distributed: fsdp does not shard 4-bit weights (model.quantize: nf4); use ddp")
        if recipe.rollout.backend != "native":
            problems.append("train.distributed: fsdp samples with rollout.backend: native only")
    return problems
