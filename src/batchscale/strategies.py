"""How the members of an ensemble compute their gradients and logits: three ways, one maths.

- `packed`: all members as one wide model (packed.py): grouped convolutions and batched
  matrix multiplies, plain autograd;
- `vmap`: `torch.func.vmap` over a functional call of the model: any module without
  train-mode randomness (BatchNorm's running statistics are each member's own, batched);
- `loop`: one member after another: the least memory at once, and the only one that draws
  each member's Dropout masks from that member's own stream (`MemberRandomness`).

Each is an object with the same two methods, `gradients` and `logits`, chosen once per
ensemble by `resolve_strategy`; only speed, memory and float rounding differ. Why `auto`
chooses as it does is measured in docs/decisions.md ("How the members train together").
"""

from __future__ import annotations

import contextlib
import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

from batchscale import packed
from batchscale.model_traits import can_pack, is_random

Params = dict[str, torch.Tensor]

STRATEGIES = ("packed", "vmap", "loop")
# On a CPU, `auto` packs at most as many members at a time as keep one packed layer's
# activations within this many bytes per torch thread: a few MiB, the L2/L3 cache a core can
# count on; each thread's core brings its own (docs/decisions.md has the measurements).
PACKED_CACHE_BYTES = 4 * 2**20
# Where not all members fit, a member whose layer holds at least this many bytes loops: its ops
# are large enough to pay for their own dispatch. Packing the default study's B=256 jobs 4 + 4
# (622 KB a member) was 1.16x faster alone but no faster two jobs at a time, and would have
# changed their numbers; the tuned sweep's 40 members at B=64 and B=128 (155 and 311 KB) train
# 2.2x and 1.5x faster in groups than looped (docs/decisions.md).
LOOP_MEMBER_BYTES = 512 * 2**10


def member_loss(base: nn.Module, params: Params, buffers: Params, x: torch.Tensor, y: torch.Tensor):
    """One member's mean cross-entropy on (x, y), with its own weights in `base`'s structure."""
    return F.cross_entropy(functional_call(base, (params, buffers), (x,)), y)


def member_logits(base: nn.Module, params: Params, buffers: Params, x: torch.Tensor) -> torch.Tensor:
    return functional_call(base, (params, buffers), (x,))


def _member(tensors: Params, m: int) -> Params:
    return {name: t[m] for name, t in tensors.items()}


def _members(tensors: Params, group: slice) -> Params:
    """The stacked tensors of the members in `group` (views)."""
    return {name: t[group] for name, t in tensors.items()}


class MemberStrategy(Protocol):
    """Every member at once; tensors are stacked over members (dimension 0)."""

    name: str

    def gradients(self, params: Params, buffers: Params, x, y) -> tuple[Params, torch.Tensor]:
        """Each member's gradient of its mean loss on its own batch (x[m], y[m]), stacked
        like `params`, and the (members,) losses."""
        ...

    def logits(self, params: Params, buffers: Params, x: torch.Tensor) -> torch.Tensor:
        """Each member's logits on the same examples x: (members, examples, classes)."""
        ...


class Packed:
    """All members as one wide model, or `group` members at a time (`packed_group`): groups
    small enough for the cache keep the packed ops' few large kernels, where the loop would pay
    every op once per member."""

    name = "packed"

    def __init__(self, base: nn.Module, members: int, group: int | None = None):
        self.base, self.members = base, members
        self.group = min(group or members, members)

    def _groups(self) -> list[slice]:
        starts = range(0, self.members, self.group)
        return [slice(start, min(start + self.group, self.members)) for start in starts]

    def gradients(self, params, buffers, x, y):
        if self.group == self.members:
            return self._gradients(params, x, y)
        parts = [self._gradients(_members(params, g), x[g], y[g]) for g in self._groups()]
        grads = {name: torch.cat([part[name] for part, _ in parts]) for name in params}
        return grads, torch.cat([losses for _, losses in parts])

    def _gradients(self, params, x, y):
        leaves = {name: p.detach().requires_grad_() for name, p in params.items()}
        with torch.enable_grad():
            losses = packed.member_losses(self.base.forward_packed(leaves, x), y)
            grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return dict(zip(leaves, grads, strict=True)), losses.detach()

    def logits(self, params, buffers, x):
        if self.group == self.members:
            return self.base.forward_packed(params, x.expand(self.members, *x.shape))
        return torch.cat([self.base.forward_packed(_members(params, g), x.expand(g.stop - g.start, *x.shape))
                          for g in self._groups()])  # fmt: skip


def example_gradients(
    base: nn.Module, params: Params, buffers: Params, x: torch.Tensor, y: torch.Tensor
) -> Params:
    """Each member's gradient of its loss on each of its examples alone: params and buffers
    stacked (M, ...), x (M, E, ...), y (M, E) -> {name: (M, E, ...)}. Pass `base` in eval mode:
    one example has no batch statistics.

    For a model with a packed form every (member, example) pair becomes a member of one packed
    model with a batch of one: one forward and backward pass of plain autograd. `vmap(grad(...))`
    gives the same numbers to float rounding, but torch.func's first `grad` call imports
    torch._dynamo, about 2 s in every process that calls it (docs/decisions.md, "Per-example
    gradients and the Hessian without torch.func"). A model without a packed form (BatchNorm's
    buffers, Dropout) keeps it.
    """
    if not can_pack(base):

        def example_loss(p, b, xi, yi):
            return member_loss(base, p, b, xi.unsqueeze(0), yi.unsqueeze(0))

        return vmap(vmap(grad(example_loss), in_dims=(None, None, 0, 0)))(params, buffers, x, y)
    members, examples = y.shape
    pairs = members * examples
    expanded = {
        name: p.unsqueeze(1).expand(members, examples, *p.shape[1:]).reshape(pairs, *p.shape[1:])
        for name, p in params.items()
    }
    one_each = x.reshape(pairs, 1, *x.shape[2:]), y.reshape(pairs, 1)
    grads, _ = Packed(base, pairs).gradients(expanded, {}, *one_each)
    return {name: g.view(members, examples, *g.shape[1:]) for name, g in grads.items()}


class Vmapped:
    name = "vmap"

    def __init__(self, base: nn.Module, members: int):
        self.base, self.members = base, members
        self._grads = vmap(grad_and_value(self._loss))
        self._logits = vmap(self._member_logits, in_dims=(0, 0, None))

    def _loss(self, params, buffers, x, y):
        return member_loss(self.base, params, buffers, x, y)

    def _member_logits(self, params, buffers, x):
        return member_logits(self.base, params, buffers, x)

    def gradients(self, params, buffers, x, y):
        return self._grads(params, buffers, x, y)

    def logits(self, params, buffers, x):
        return self._logits(params, buffers, x)


class MemberRandomness:
    """Each member's own stream of train-mode random numbers (Dropout's masks): the global
    generator's state as it stood right after that member's weights were drawn, which is where
    a plain run with that seed would go on drawing. `states` is checkpointed with the run."""

    def __init__(self, states: list[torch.Tensor], device: torch.device):
        self.states, self.device = states, device

    @contextlib.contextmanager
    def member(self, m: int):
        """Draw from member m's stream inside the block, and keep where it got to."""
        get, set_ = _generator_state_functions(self.device)
        outside = get()
        set_(self.states[m])
        try:
            yield
        finally:
            self.states[m] = get()
            set_(outside)


def _generator_state_functions(device: torch.device):
    """(get, set) of the global generator that draws random numbers on `device`."""
    if device.type == "cuda":
        return (lambda: torch.cuda.get_rng_state(device)), (lambda s: torch.cuda.set_rng_state(s, device))
    return torch.get_rng_state, torch.set_rng_state


def generator_state(device: torch.device) -> torch.Tensor:
    return _generator_state_functions(device)[0]()


class Looped:
    name = "loop"

    def __init__(self, base: nn.Module, members: int, randomness: MemberRandomness | None = None):
        self.base, self.members, self.randomness = base, members, randomness

    def _loss(self, leaves, buffers, x, y, m):
        if self.randomness is None:
            return member_loss(self.base, leaves[m], _member(buffers, m), x[m], y[m])
        with self.randomness.member(m):
            return member_loss(self.base, leaves[m], _member(buffers, m), x[m], y[m])

    def gradients(self, params, buffers, x, y):
        # One autograd graph with a leaf per member and parameter (views, no copies): the
        # gradient of the summed losses with respect to member m's leaves is member m's own.
        # Buffers are views too, so BatchNorm's running statistics update each member's own.
        members = range(self.members)
        leaves = [{name: p[m].detach().requires_grad_() for name, p in params.items()} for m in members]
        with torch.enable_grad():
            losses = torch.stack([self._loss(leaves, buffers, x, y, m) for m in members])
            flat = torch.autograd.grad(losses.sum(), [t for member in leaves for t in member.values()])
        per_param = len(params)
        grads = {name: torch.stack(flat[i::per_param]) for i, name in enumerate(params)}
        return grads, losses.detach()

    def logits(self, params, buffers, x):
        logits = []
        for m in range(self.members):
            logits.append(member_logits(self.base, _member(params, m), _member(buffers, m), x))
        return torch.stack(logits)


_BY_NAME = {cls.name: cls for cls in (Packed, Vmapped, Looped)}


def make_strategy(
    name: str,
    base: nn.Module,
    members: int,
    randomness: MemberRandomness | None = None,
    group: int | None = None,
) -> MemberStrategy:
    """The strategy object `resolve_strategy` named, for `members` copies of `base`; a model
    with train-mode randomness gets each member's own stream (`randomness`, loop only); packed
    takes `group` members at a time (default: all)."""
    if name == "loop":
        return Looped(base, members, randomness)
    if name == "packed":
        return Packed(base, members, group)
    return _BY_NAME[name](base, members)


def choose(
    name: str, model: nn.Module, members: int, batch_size: int, device: torch.device, example: torch.Tensor
) -> tuple[str, int]:
    """The strategy `name` stands for (`resolve_strategy`) and the members one packed step takes:
    `packed_group` under auto, all of them otherwise (an explicit `packed` packs every member)."""
    resolved = resolve_strategy(name, model, members, batch_size, device, example)
    if resolved == "packed" and name == "auto":
        return resolved, packed_group(model, members, batch_size, device, example)
    return resolved, members


def describe(name: str, group: int, members: int) -> str:
    """A strategy as summary.json, jobs.csv and the bench name it: packed in groups says so."""
    return f"packed in groups of {group}" if name == "packed" and group < members else name


def widest_activation(model: nn.Module, example: torch.Tensor) -> int:
    """Values per example in the model's largest layer output (one example through it)."""
    sizes = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel())) for m in model.modules()
    ]
    # Eval mode: BatchNorm cannot normalise a batch of one, and its running statistics stay put.
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example.unsqueeze(0))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return max(sizes)


def resolve_strategy(
    name: str,
    model: nn.Module,
    members: int,
    batch_size: int,
    device: torch.device,
    example: torch.Tensor,
    threads: int | None = None,
) -> str:
    """The strategy `name` (`train.ensemble`) stands for: itself, or what `auto` picks.

    `auto` packs wherever the model has a packed form; on a CPU, where one packed layer of all
    members' activations outgrows the cache of the cores torch computes on, it packs as many
    at a time as fit (`packed_group`), and loops when not two do or when one member's ops are
    large: the loop's per-member activations stay in cache, but it pays every op once per
    member. With more threads the packed ops split across more cores and caches while the
    loop's small ones gain little, so the cache counts once per thread. A model without a
    packed form uses vmap; a single member loops. The choice depends only on the setup, never
    on a timing, so a rerun repeats it.
    """
    if name == "packed" and not can_pack(model):
        raise ValueError(f"train.ensemble: {type(model).__name__} has no packed form; use vmap or loop")
    if name == "vmap" and is_random(model):
        raise ValueError(
            f"train.ensemble: vmap cannot give each member its own dropout masks ({type(model).__name__} "
            "has Dropout); use loop or auto"
        )
    if name != "auto":
        return name
    if members == 1 or is_random(model):
        return "loop"
    if not can_pack(model):
        return "vmap"
    return "packed" if packed_group(model, members, batch_size, device, example, threads) > 1 else "loop"


def packed_group(
    model: nn.Module,
    members: int,
    batch_size: int,
    device: torch.device,
    example: torch.Tensor,
    threads: int | None = None,
) -> int:
    """How many members one packed step of `auto` takes: all of them on a GPU; on a CPU as many
    as keep one packed layer of their activations within the cache of the cores torch computes
    on (PACKED_CACHE_BYTES per thread; `threads` defaults to torch's count), in groups of nearly
    equal size (8 members of which 6 fit go 4 + 4). 1, the loop: not two fit, or not all do and
    one member's layer is large enough for ops of its own (LOOP_MEMBER_BYTES)."""
    if device.type != "cpu":
        return members
    member_bytes = batch_size * widest_activation(model, example) * example.element_size()
    cores = max(1, threads if threads is not None else torch.get_num_threads())
    fit = max(1, PACKED_CACHE_BYTES * cores // member_bytes)
    if fit < members and member_bytes >= LOOP_MEMBER_BYTES:
        return 1
    return math.ceil(members / math.ceil(members / fit))
