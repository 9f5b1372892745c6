"""NOAH — Neural prOmpt seArcH (Zhang, Zhou & Liu, 2022): a supernet of Adapter, LoRA and
VPT-Deep branches, an evolutionary search for one sub-network under a parameter budget, and the
retraining of that sub-network.

Branches in every block l of a ViT (sizes per layer, from grids; 0 switches a branch off):

- prompt  ``p_l``: VPT-Deep tokens entering before block l and replacing the prompt outputs
  currently in the sequence (p_l = 0: the current prompt outputs carry on, as in NOAH).
- lora    ``r_l``: ``Δqkv = B·A·Drop(x)`` on the fused qkv; one A (r×d) shared by the targets
  and B (n_t·H·d_h × r), targets q,k,v by default as in NOAH's code. No scale.
- adapter ``k_l``: NOAH's sequential adapter after the MLP,
  ``h + up(Drop(QuickGELU(down(h))))``, ``h = mlp(x̂)``, with biases.

Supernet (``apply(model, "noah")`` without ``subnet``): every branch holds its grid's largest
size and a sub-network uses the *first* p/r/k rows (weight sharing, as NOAH/AutoFormer). In
training mode every forward pass samples a random sub-network (each layer and branch uniformly
from its grid) with a seeded RNG owned by the model (option ``seed``), so runs are deterministic.
In eval mode the fixed sub-network is used (the largest one until :func:`set_subnet`).

Search: :func:`search` — evolution (random population, then top-k, mutation and uniform
crossover, as in NOAH/AutoFormer) on a user ``evaluate(model) -> float`` (e.g. val200 accuracy),
only over sub-networks within ``budget_params`` trainable parameters (classifier excluded).

Retrain: ``apply(fresh_backbone, "noah", subnet=...)`` builds exactly the chosen sizes (fresh
init, as NOAH retrains the sub-network); the sub-network is part of the options and is therefore
saved in ``adapter_config.json`` and rebuilt by ``load_adapter``. :func:`run_noah` chains the
three phases.

Trainable parameters of a sub-network (classifier excluded), d = width, A = H·d_h, n_t targets:
``Σ_l  p_l·d + r_l·(d + n_t·A) + [k_l > 0]·(2·d·k_l + k_l + d)``; stored fp32 (4 bytes each).

Differences from NOAH's released code, all deliberate: layers' sizes are drawn independently
(NOAH also draws a depth in {3, 6, 9, 12} and zeros the layers beyond it — a subset of this
space); the adapter's ``up`` and LoRA's B start at zero (NOAH: Xavier for the adapter), so a
sub-network without prompts equals the backbone at init; NOAH's extra first-layer prompt and
its position embedding (immediately replaced by block 0's prompts in NOAH's forward, yet
counted) are not built. ViT only (the prompt branch needs a token sequence).
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..fsio import atomic_write
from ..heads import TARGET_INDEX
from ..seeding import derive_seed
from .base import AdapterLayer, MethodSchedule, MethodSpec, ScheduleActions, documented, option, register, replace_module
from .prompts import PromptedSequential, vit_token_blocks, vpt_init_bound

NOAH_PAPER = "Zhang, Zhou & Liu, Neural Prompt Search, arXiv 2206.04673 (NOAH)"
BRANCHES = ("prompt", "lora", "adapter")


def _int_tuple(values, option: str, method: str) -> tuple[int, ...]:
    try:
        out = sorted({int(str(v).strip()) for v in values})
    except ValueError:
        raise ValueError(f"option '{option}' of method '{method}': expected integers, got {list(values)!r}") from None
    if not out or out[0] < 0:
        raise ValueError(f"option '{option}' of method '{method}': expected a non-empty list of integers >= 0")
    return tuple(out)


def load_subnet(value: Any, method: str = "noah") -> dict[str, list[int]]:
    """A sub-network from a dict, a JSON string or the path of a JSON file (as :func:`search` and
    :func:`save_subnet` write it), as ``{"prompt": [...], "lora": [...], "adapter": [...]}``."""
    source = "option 'subnet'"
    if isinstance(value, (str, Path)):
        text = str(value).strip()
        if not text.startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise ValueError(f"option 'subnet' of method '{method}': {path} is not a file (expected a JSON "
                                 "file or a JSON object of per-layer choices)")
            source, text = str(path), path.read_text()
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if isinstance(value, dict) and "subnet" in value and isinstance(value["subnet"], dict):
        value = value["subnet"]  # a saved search result
    if not isinstance(value, dict):
        raise ValueError(f"{source} of method '{method}': expected a mapping of branch -> per-layer sizes")
    unknown = sorted(set(value) - set(BRANCHES))
    if unknown:
        raise ValueError(f"{source} of method '{method}': unknown branches {unknown}; expected {list(BRANCHES)}")
    lengths = {len(v) for v in value.values() if isinstance(v, (list, tuple))}
    if len(lengths) > 1 or any(not isinstance(v, (list, tuple)) for v in value.values()) or not value:
        raise ValueError(f"{source} of method '{method}': expected one list per branch, all of the same length")
    n = lengths.pop()
    out = {}
    for branch in BRANCHES:
        sizes = value.get(branch, [0] * n)
        try:
            sizes = [int(s) for s in sizes]
        except (TypeError, ValueError):
            raise ValueError(f"{source}: '{branch}' must be a list of integers, got {sizes!r}") from None
        if any(s < 0 for s in sizes):
            raise ValueError(f"{source}: '{branch}' sizes must be >= 0, got {sizes}")
        out[branch] = sizes
    return out


def save_subnet(subnet: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({b: list(subnet[b]) for b in BRANCHES}, indent=2))
    return path


@documented
@dataclass
class NoahConfig:
    """Options of NOAH: the supernet's per-layer size grids, and a fixed sub-network to retrain."""

    prompt_grid: tuple[int, ...] = option((0, 1, 5, 10), "per-layer prompt-token counts the supernet samples")
    lora_grid: tuple[int, ...] = option((0, 1, 5, 10), "per-layer LoRA ranks the supernet samples")
    adapter_grid: tuple[int, ...] = option((0, 1, 5, 10), "per-layer adapter widths the supernet samples")
    lora_targets: tuple[str, ...] = option(("q", "k", "v"), "which of q, k, v the LoRA branch updates")
    dropout: float = option(0.1, "dropout on prompts, the LoRA input and the adapter bottleneck")
    seed: int = option(0, "seed of the supernet's sub-network sampler")
    subnet: Optional[Union[dict, str]] = option(None, "fixed sub-network to retrain ({branch: per-layer sizes}, or a "
                                                      "JSON file of one); none: train the supernet")

    def validate(self, method: str) -> None:
        for name in ("prompt_grid", "lora_grid", "adapter_grid"):
            setattr(self, name, _int_tuple(getattr(self, name), name, method))
        bad = [t for t in self.lora_targets if t not in TARGET_INDEX]
        if bad or not self.lora_targets or len(set(self.lora_targets)) != len(self.lora_targets):
            raise ValueError(f"option 'lora_targets'={','.join(self.lora_targets)!r} of method '{method}': "
                             "expected a non-empty subset of q,k,v without repeats")
        self.lora_targets = tuple(t for t in "qkv" if t in self.lora_targets)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"option 'dropout'={self.dropout} of method '{method}': expected 0 <= dropout < 1")
        if self.subnet is not None:
            self.subnet = load_subnet(self.subnet, method)

    def grid(self, branch: str) -> tuple[int, ...]:
        return getattr(self, f"{branch}_grid")


class NoahQKV(AdapterLayer):
    """The fused qkv Linear plus NOAH's LoRA branch (first ``active`` of ``max_rank`` ranks)."""

    mergeable = False

    def __init__(self, base: nn.Linear, name: str, max_rank: int, targets: tuple[str, ...], dropout: float):
        super().__init__()
        self.base = base
        self.name = name
        self.targets = targets
        self.in_dim = base.in_features
        self.attn_dim = base.out_features // 3
        self.max_rank = self.active = int(max_rank)
        self.dropout = float(dropout)
        device = base.weight.device
        if self.max_rank > 0:
            self.lora_A = nn.Parameter(torch.empty(self.max_rank, self.in_dim, device=device))
            self.lora_B = nn.Parameter(torch.zeros(len(targets) * self.attn_dim, self.max_rank, device=device))
            with torch.no_grad():
                bound = 1.0 / self.in_dim ** 0.5  # nn.Linear's Kaiming-uniform (a=√5)
                self.lora_A.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        r = self.active
        if r == 0:
            return out
        z = F.linear(F.dropout(x, self.dropout, self.training), self.lora_A[:r].to(x.dtype))
        delta = F.linear(z, self.lora_B[:, :r].to(x.dtype))
        a = self.attn_dim
        if len(self.targets) == 3:
            return out + delta
        pieces, t = [], 0
        for target in "qkv":
            block = out[..., TARGET_INDEX[target] * a:(TARGET_INDEX[target] + 1) * a]
            if target in self.targets:
                block = block + delta[..., t * a:(t + 1) * a]
                t += 1
            pieces.append(block)
        return torch.cat(pieces, dim=-1)

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [self.lora_A, self.lora_B] if self.max_rank > 0 else []

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().float().clone() for k, p in (("lora_A", getattr(self, "lora_A", None)),
                                                              ("lora_B", getattr(self, "lora_B", None))) if p is not None}

    @torch.no_grad()
    def load_stored_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        _load_exact(self, ("lora_A", "lora_B") if self.max_rank > 0 else (), tensors, source)

    def stored_nbytes(self) -> int:
        return 4 * self.max_rank * (self.in_dim + len(self.targets) * self.attn_dim)

    def extra_repr(self) -> str:
        return f"lora targets={','.join(self.targets)}, rank={self.active}/{self.max_rank}"


class NoahMLP(AdapterLayer):
    """A block's MLP plus NOAH's sequential adapter (first ``active`` of ``max_dim`` units)."""

    mergeable = False

    def __init__(self, base: nn.Module, name: str, dim: int, max_dim: int, dropout: float):
        super().__init__()
        self.base = base
        self.name = name
        self.dim = dim
        self.max_dim = self.active = int(max_dim)
        self.dropout = float(dropout)
        device = next(base.parameters()).device
        if self.max_dim > 0:
            self.down_weight = nn.Parameter(torch.empty(self.max_dim, dim, device=device))
            self.down_bias = nn.Parameter(torch.zeros(self.max_dim, device=device))
            self.up_weight = nn.Parameter(torch.zeros(dim, self.max_dim, device=device))
            self.up_bias = nn.Parameter(torch.zeros(dim, device=device))
            with torch.no_grad():
                bound = 1.0 / dim ** 0.5
                self.down_weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        k = self.active
        if k == 0:
            return h
        z = F.linear(h, self.down_weight[:k].to(h.dtype), self.down_bias[:k].to(h.dtype))
        z = z * torch.sigmoid(1.702 * z)  # QuickGELU, as NOAH's adapter
        z = F.dropout(z, self.dropout, self.training)
        return h + F.linear(z, self.up_weight[:, :k].to(h.dtype), self.up_bias.to(h.dtype))

    _KEYS = ("down_weight", "down_bias", "up_weight", "up_bias")

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [getattr(self, k) for k in self._KEYS] if self.max_dim > 0 else []

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        if self.max_dim == 0:
            return {}
        return {k: getattr(self, k).detach().float().clone() for k in self._KEYS}

    @torch.no_grad()
    def load_stored_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        _load_exact(self, self._KEYS if self.max_dim > 0 else (), tensors, source)

    def stored_nbytes(self) -> int:
        return 4 * (2 * self.dim * self.max_dim + self.max_dim + self.dim) if self.max_dim > 0 else 0

    def extra_repr(self) -> str:
        return f"adapter dim={self.active}/{self.max_dim}"


def _load_exact(layer: nn.Module, keys, tensors: dict[str, torch.Tensor], source: str) -> None:
    for key in keys:
        if key not in tensors:
            raise ValueError(f"{source}: missing tensor '{layer.name}.{key}'")
        param = getattr(layer, key)
        if tensors[key].shape != param.shape:
            raise ValueError(f"{source}: '{layer.name}.{key}' has shape {tuple(tensors[key].shape)}, expected "
                             f"{tuple(param.shape)} (another NOAH grid or sub-network?)")
        param.copy_(tensors[key])
    extra = sorted(set(tensors) - set(keys))
    if extra:
        raise ValueError(f"{source}: unexpected tensors {[f'{layer.name}.{k}' for k in extra]}")


class NoahBlocks(PromptedSequential):
    """The blocks with NOAH's prompt branch; owns the sub-network sampler and the layer sizes."""

    def __init__(self, blocks, num_prefix_tokens: int, embed_dim: int, config: NoahConfig, max_sizes: dict,
                 init_bound: float):
        super().__init__(blocks, num_prefix_tokens, embed_dim, max_sizes["prompt"], config.dropout, init_bound)
        self.supernet = config.subnet is None
        self.grids = {b: tuple(config.grid(b)) for b in BRANCHES}
        self.max_sizes = {b: list(v) for b, v in max_sizes.items()}
        self.n_targets = len(config.lora_targets)
        self.seed = config.seed
        self.rng = random.Random(config.seed)
        self.fixed = {b: list(v) for b, v in max_sizes.items()}
        self._activate(self.fixed)

    # the NOAH layers live inside the blocks (not registered twice)
    def qkv_layer(self, l: int) -> NoahQKV:
        return self[l].attn.qkv

    def mlp_layer(self, l: int) -> NoahMLP:
        return self[l].mlp

    def num_layers(self) -> int:
        return len(self.lengths)

    def check_subnet(self, subnet: dict) -> dict[str, list[int]]:
        subnet = load_subnet(subnet)
        n = self.num_layers()
        for branch in BRANCHES:
            sizes = subnet[branch]
            if len(sizes) != n:
                raise ValueError(f"NOAH sub-network: '{branch}' has {len(sizes)} entries, the backbone has {n} blocks")
            over = [(l, s, m) for l, (s, m) in enumerate(zip(sizes, self.max_sizes[branch])) if s > m]
            if over:
                l, s, m = over[0]
                raise ValueError(f"NOAH sub-network: '{branch}' size {s} at layer {l} exceeds the "
                                 f"{'supernet' if self.supernet else 'model'}'s {m}")
        return subnet

    def set_subnet(self, subnet: dict) -> None:
        self.fixed = self.check_subnet(subnet)
        self._activate(self.fixed)

    def _activate(self, subnet: dict) -> None:
        self.active = list(subnet["prompt"])
        for l in range(self.num_layers()):
            self.qkv_layer(l).active = subnet["lora"][l]
            self.mlp_layer(l).active = subnet["adapter"][l]

    def sample(self, rng: random.Random | None = None) -> dict[str, list[int]]:
        rng = rng or self.rng
        return {b: [rng.choice(self.grids[b]) for _ in range(self.num_layers())] for b in BRANCHES}

    def parameters_of(self, subnet: dict) -> int:
        """Closed-form trainable parameters of a sub-network (classifier excluded)."""
        total = 0
        for l in range(self.num_layers()):
            p, r, k = (subnet[b][l] for b in BRANCHES)
            qkv, d = self.qkv_layer(l), self.mlp_layer(l).dim
            total += p * self.embed_dim + r * (qkv.in_dim + self.n_targets * qkv.attn_dim)
            total += (2 * d * k + k + d) if k > 0 else 0
        return total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.supernet and self.training:
            self._activate(self.sample())
        else:
            self._activate(self.fixed)
        return super().forward(x)

    def extra_repr(self) -> str:
        mode = "supernet" if self.supernet else "sub-network"
        return f"{mode}, grids={self.grids}, fixed={self.fixed}"


def noah_blocks(model: nn.Module) -> NoahBlocks:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, NoahBlocks):
        raise ValueError(f"{type(model).__name__} has no NOAH supernet/sub-network; apply method 'noah' first")
    return blocks


def set_subnet(model: nn.Module, subnet: dict) -> None:
    """Fix the sub-network a NOAH model uses in eval mode (and, for a sub-network model, always)."""
    noah_blocks(model).set_subnet(subnet)


def subnet_parameters(model: nn.Module, subnet: dict) -> int:
    net = noah_blocks(model)
    return net.parameters_of(net.check_subnet(subnet))


def apply_noah(model: nn.Module, config: NoahConfig, method: str) -> None:
    blocks = vit_token_blocks(model, method)
    n = len(blocks)
    if config.subnet is not None:
        sizes = config.subnet
        wrong = [b for b in BRANCHES if len(sizes[b]) != n]
        if wrong:
            raise ValueError(f"option 'subnet' of method '{method}': {wrong[0]!r} has {len(sizes[wrong[0]])} "
                             f"entries, the backbone has {n} blocks")
    else:
        sizes = {b: [max(config.grid(b))] * n for b in BRANCHES}
    for l, block in enumerate(blocks):
        qkv = getattr(getattr(block, "attn", None), "qkv", None)
        if not isinstance(qkv, nn.Linear) or qkv.out_features % 3:
            raise ValueError(f"method '{method}': blocks.{l}.attn.qkv is not a fused qkv Linear")
        width = getattr(getattr(block, "mlp", None), "fc2", None)
        if not isinstance(width, nn.Linear):
            raise ValueError(f"method '{method}': blocks.{l}.mlp is not a timm Mlp")
        replace_module(block, "attn.qkv", NoahQKV(qkv, f"blocks.{l}.attn.qkv", sizes["lora"][l],
                                                  config.lora_targets, config.dropout))
        replace_module(block, "mlp", NoahMLP(block.mlp, f"blocks.{l}.mlp", width.out_features,
                                             sizes["adapter"][l], config.dropout))
    model.blocks = NoahBlocks(list(blocks), model.num_prefix_tokens, model.embed_dim, config, sizes,
                              vpt_init_bound(model))


def _identity_at_init(options: dict) -> bool:
    subnet = options.get("subnet")
    if subnet is not None:
        return sum(load_subnet(subnet)["prompt"]) == 0
    return max(int(v) for v in options.get("prompt_grid", (0,))) == 0


class NoahSchedule(MethodSchedule):
    """The supernet's sub-network sampler draws from its own RNG during training; it is re-seeded
    from (option ``seed``, epoch) at the start of every epoch, so epoch e samples the same
    sub-networks whether or not the run was interrupted before it (exact resume)."""

    def on_epoch_start(self, epoch: int) -> ScheduleActions:
        for module in self.model.modules():
            if isinstance(module, NoahBlocks):
                module.rng = random.Random(derive_seed(module.seed, "noah-sampler", epoch))
        return ScheduleActions()


register(MethodSpec(
    "noah", NoahConfig, apply_noah,
    "supernet of Adapter + LoRA + VPT-Deep per layer; evolutionary search under a parameter budget; "
    "retrain the sub-network (option 'subnet')", NOAH_PAPER, mergeable=False, identity_at_init=_identity_at_init,
    schedule=NoahSchedule, step_may_skip_parameters=True,
))


# ----- search ---------------------------------------------------------------------------------
def _key(subnet: dict) -> tuple:
    return tuple(tuple(subnet[b]) for b in BRANCHES)


def search(model: nn.Module, evaluate: Callable[[nn.Module], float], budget_params: int, population: int = 50,
           generations: int = 20, seed: int = 0, *, select: int | None = None, mutation_prob: float = 0.2,
           min_params: int = 0, log: Callable[[str], None] | None = None) -> dict:
    """Evolutionary search of a NOAH supernet for the sub-network with the highest
    ``evaluate(model)`` among those with at most ``budget_params`` trainable parameters
    (classifier excluded; at least ``min_params``).

    Generation 0 is a random population; each later one holds ``population // 2`` mutations
    (every per-layer size redrawn from its grid with probability ``mutation_prob``) and
    ``population // 2`` uniform crossovers of the top ``select`` (default ``population // 5``)
    candidates so far, topped up with random ones. The defaults are NOAH's (population 50, top 10,
    25 mutations + 25 crossovers, m_prob 0.2, 20 generations); on a CPU pass smaller ones.
    A candidate over budget is repaired by stepping random sizes down their grid.
    Every candidate is evaluated once, in eval mode. Deterministic for a seed when ``evaluate`` is.

    Returns ``{"subnet", "score", "params", "budget_params", "history", "evaluations", "seed",
    "candidates"}``; the model is left with the best sub-network fixed (:func:`set_subnet`).
    """
    net = noah_blocks(model)
    if not net.supernet:
        raise ValueError("NOAH search needs the supernet: apply method 'noah' without option 'subnet'")
    if budget_params < 0 or min_params < 0 or min_params > budget_params:
        raise ValueError(f"NOAH search: need 0 <= min_params ({min_params}) <= budget_params ({budget_params})")
    if population < 2 or generations < 1:
        raise ValueError(f"NOAH search: need population >= 2 and generations >= 1 (got {population}, {generations})")
    select = select or max(2, population // 5)
    rng = random.Random(seed)
    grids, n = net.grids, net.num_layers()
    genes = [(b, l) for b in BRANCHES for l in range(n)]
    results: dict[tuple, dict] = {}
    was_training = model.training
    say = log or (lambda message: None)

    def repair(subnet: dict) -> dict | None:
        while net.parameters_of(subnet) > budget_params:
            positive = [(b, l) for b, l in genes if subnet[b][l] > min(grids[b])]
            if not positive:
                return None
            b, l = rng.choice(positive)
            smaller = [v for v in grids[b] if v < subnet[b][l]]
            subnet[b][l] = smaller[-1]
        return subnet if net.parameters_of(subnet) >= min_params else None

    def fresh(make: Callable[[], dict], count: int, taken: set) -> list[dict]:
        out, tries = [], 0
        while len(out) < count and tries < 50 * max(count, 1):
            tries += 1
            cand = repair(make())
            if cand is None or _key(cand) in taken:
                continue
            taken.add(_key(cand))
            out.append(cand)
        return out

    def score(cand: dict) -> None:
        key = _key(cand)
        if key in results:
            return
        net.set_subnet(cand)
        model.eval()
        with torch.no_grad():
            value = float(evaluate(model))
        results[key] = {"subnet": {b: list(cand[b]) for b in BRANCHES}, "score": value,
                        "params": net.parameters_of(cand)}

    def ranking() -> list[dict]:
        return sorted(results.values(), key=lambda r: (-r["score"], r["params"], _key(r["subnet"])))

    def mutate() -> dict:
        parent = rng.choice(top)["subnet"]
        return {b: [rng.choice(grids[b]) if rng.random() < mutation_prob else v for v in parent[b]] for b in BRANCHES}

    def crossover() -> dict:
        p1, p2 = rng.choice(top)["subnet"], rng.choice(top)["subnet"]
        return {b: [p1[b][l] if rng.random() < 0.5 else p2[b][l] for l in range(n)] for b in BRANCHES}

    history = []
    taken: set = set()
    candidates = fresh(lambda: net.sample(rng), population, taken)
    if not candidates:
        raise ValueError(f"NOAH search: no sub-network has between {min_params} and {budget_params} parameters")
    top: list[dict] = []
    try:
        for generation in range(generations):
            for cand in candidates:
                score(cand)
            top = ranking()[:select]
            best = top[0]
            history.append({"generation": generation, "best_score": best["score"], "best_params": best["params"],
                            "evaluations": len(results)})
            say(f"NOAH search generation {generation}: best {best['score']:.4f} with {best['params']} parameters "
                f"({len(results)} evaluated)")
            if generation == generations - 1:
                break
            half = population // 2
            candidates = fresh(mutate, half, taken)
            candidates += fresh(crossover, population - len(candidates), taken)
            candidates += fresh(lambda: net.sample(rng), population - len(candidates), taken)
    finally:
        model.train(was_training)
    best = ranking()[0]
    net.set_subnet(best["subnet"])
    return {
        "subnet": best["subnet"], "score": best["score"], "params": best["params"],
        "budget_params": int(budget_params), "history": history, "evaluations": len(results), "seed": seed,
        "candidates": ranking(),
    }


def run_noah(backbone: Callable[[], nn.Module], train: Callable[[nn.Module, str], Any],
             evaluate: Callable[[nn.Module], float], budget_params: int, *, options: dict | None = None,
             population: int = 50, generations: int = 20, seed: int = 0, out_dir: str | Path | None = None,
             log: Callable[[str], None] | None = None) -> dict:
    """NOAH's three phases end to end.

    1. supernet: ``apply(backbone(), "noah", **options)``; ``train(model, "supernet")``
       (random sub-network per training step);
    2. search: :func:`search` with ``evaluate`` (e.g. val accuracy) under ``budget_params``;
    3. retrain: ``apply(backbone(), "noah", **options, subnet=best)``; ``train(model, "retrain")``.

    ``backbone()`` must build the same (pretrained) backbone each call. With ``out_dir`` the search
    result goes to ``out_dir/noah_search.json``; save the retrained model with
    ``heartlora.save_adapter(result["model"], ...)`` (the adapter folder's one owner).
    Returns the retrained model, the supernet, the search result, its final ``score`` and the
    wall time of each phase (s).
    """
    from .factory import apply  # late import: the registry imports this module

    options = dict(options or {})
    options.pop("subnet", None)
    options.setdefault("seed", seed)
    say = log or (lambda message: None)
    timings = {}

    start = time.perf_counter()
    supernet = apply(backbone(), "noah", **options)
    train(supernet, "supernet")
    timings["supernet"] = time.perf_counter() - start

    start = time.perf_counter()
    result = search(supernet, evaluate, budget_params, population, generations, seed, log=say)
    timings["search"] = time.perf_counter() - start
    say(f"NOAH: chose {result['subnet']} ({result['params']} parameters, score {result['score']:.4f})")

    start = time.perf_counter()
    model = apply(backbone(), "noah", **options, subnet=result["subnet"])
    train(model, "retrain")
    timings["retrain"] = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        final = float(evaluate(model))

    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = {k: v for k, v in result.items() if k != "candidates"}
        atomic_write(out_dir / "noah_search.json", json.dumps({**summary, "timings": timings}, indent=2).encode())
    return {"model": model, "supernet": supernet, "search": result, "subnet": result["subnet"],
            "score": final, "timings": timings}
