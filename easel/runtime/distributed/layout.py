"""Choosing a parallel run's layout and each rank's device, checked before any rank starts.

`resolve_layout` is the pure rule; `plan_layout` feeds it the model's facts (the DiT's attention heads from its
config.json, whether a request uses CFG) read through the loader's pieces, without loading any weights.
"""

import dataclasses
import json
import math
import re
from typing import Any

import torch

from easel.errors import InvalidInputError
from easel.runtime.distributed.parallel_state import ParallelLayout
from easel.runtime.server_args import ServerArgs

ADDRESS = re.compile(r"^\[?[\w.:-]+\]?:\d+$")  # HOST:PORT, an IPv6 host in brackets


def resolve_layout(
    num_gpus: int,
    ulysses: int | None = None,
    ring: int | None = None,
    cfg_parallel: bool = False,
    tp: int | None = None,
    heads: int | None = None,
    uses_cfg: bool = False,
) -> ParallelLayout:
    """The layout of `num_gpus` ranks: the degrees given, the unset ones filled in, all checked.

    With only num_gpus: CFG parallel (2) when the request uses CFG and num_gpus is even, TP 1, then Ulysses as far
    as it divides the heads, and ring attention for the factor left. `heads` None skips the head checks.
    """
    if num_gpus < 1:
        raise InvalidInputError(f"--num-gpus must be at least 1, got {num_gpus}")
    for flag, value in (("--ulysses-degree", ulysses), ("--ring-degree", ring), ("--tp-size", tp)):
        if value is not None and value < 1:
            raise InvalidInputError(f"{flag} must be at least 1, got {value}")
    chosen = ulysses is None and ring is None and tp is None and not cfg_parallel
    cfg = 2 if cfg_parallel or (chosen and uses_cfg and num_gpus % 2 == 0) else 1
    tp = tp or 1
    if heads is not None and heads % tp:
        raise InvalidInputError(
            f"--tp-size {tp} does not divide the DiT's {heads} attention heads (nor so its attention widths): "
            f"choose a TP size that divides {heads}"
        )
    if ulysses is None or ring is None:
        given = {"cfg": cfg, "ring": ring, "ulysses": ulysses, "tp": tp}
        given = {name: degree for name, degree in given.items() if degree is not None}
        rest, left = divmod(num_gpus, math.prod(given.values()))
        if left:
            raise InvalidInputError(
                f"the degrees {_product(given)} = {math.prod(given.values())} do not divide --num-gpus {num_gpus}: "
                f"give degrees whose product is {num_gpus}"
            )
        if ulysses is None and ring is None:
            ulysses = math.gcd(rest, heads // tp) if heads is not None else rest
            ring = rest // ulysses
        elif ulysses is None:
            ulysses = rest
        else:
            ring = rest
    layout = ParallelLayout(cfg=cfg, ring=ring, ulysses=ulysses, tp=tp)
    if layout.world_size != num_gpus:
        degrees = dataclasses.asdict(layout)
        raise InvalidInputError(
            f"the degrees {_product(degrees)} = {layout.world_size} ranks, not --num-gpus {num_gpus}: give degrees "
            f"whose product is {num_gpus}"
        )
    if heads is not None and (heads // tp) % ulysses:
        local = heads // tp
        fits = math.gcd(ulysses, local)
        per_rank = f" ({local} per TP rank)" if tp > 1 else ""
        raise InvalidInputError(
            f"--ulysses-degree {ulysses} does not divide the DiT's {heads} attention heads{per_rank}: put the rest on "
            f"ring attention, e.g. --ulysses-degree {fits} --ring-degree {ring * ulysses // fits}"
        )
    return layout


def _product(degrees: dict[str, int]) -> str:
    return " x ".join(f"{name} {degree}" for name, degree in degrees.items())


def describe(layout: ParallelLayout) -> str:
    """The line a parallel run prints when it starts."""
    return f"easel: {layout.world_size} ranks as {layout.describe()}"


def layout_options(layout: ParallelLayout) -> dict[str, Any]:
    """`layout` as the ServerArgs fields that ask for exactly it."""
    return {
        "num_gpus": layout.world_size,
        "ulysses_degree": layout.ulysses,
        "ring_degree": layout.ring,
        "enable_cfg_parallel": layout.cfg == 2,
        "tp_size": layout.tp,
    }


def asks_parallel(server_args: ServerArgs) -> bool:
    """Whether any parallel option is set: then the layout is planned (and checked), even at --num-gpus 1."""
    degrees = (server_args.ulysses_degree, server_args.ring_degree, server_args.tp_size)
    return (
        server_args.num_gpus != 1
        or server_args.nnodes != 1
        or server_args.enable_cfg_parallel
        or any(degree not in (None, 1) for degree in degrees)
    )


def plan_layout(
    server_args: ServerArgs, request: dict[str, Any] | None = None, local_ranks: int | None = None
) -> ParallelLayout:
    """The checked layout of a run of `server_args`, for `request` (`generate` keyword arguments; default: the
    model's own sampling defaults, as the Python API knows no request when it starts its ranks). The devices of this
    node's `local_ranks` ranks (default: num_gpus / nnodes) are checked too."""
    check_nodes(server_args)
    heads, uses_cfg = model_facts(server_args.model_path, request or {})
    layout = resolve_layout(
        server_args.num_gpus,
        server_args.ulysses_degree,
        server_args.ring_degree,
        server_args.enable_cfg_parallel,
        server_args.tp_size,
        heads,
        uses_cfg,
    )
    rank_devices(local_ranks or layout.world_size // server_args.nnodes, server_args.device)
    return layout


def model_facts(model_path: str, request: dict[str, Any]) -> tuple[int | None, bool]:
    """(the DiT's attention heads or None, whether `request` runs CFG on this model), from the folder's JSON only."""
    from easel.registry import resolve_model_family
    from easel.runtime.loader.component_loader import read_model_index
    from easel.runtime.loader.model_path import resolve_model_path
    from easel.runtime.loader.pipeline_loader import SAMPLING_DEFAULTS_KEY
    from easel.runtime.pipelines_core.schedule_batch import Req

    folder, hf_id = resolve_model_path(model_path)
    index = read_model_index(folder)
    family = resolve_model_family(folder, index, hf_id)
    config = family.pipeline_config_cls()
    heads = None
    if (dit_config := folder / "transformer" / "config.json").is_file():
        heads = type(config.dit_config).from_dict(json.loads(dit_config.read_text())).attention_heads
    params = family.sampling_param_cls().updated(**index.get(SAMPLING_DEFAULTS_KEY, {}))
    params = params.updated(**{name: value for name, value in request.items() if name != "step_callback"})
    return heads, config.cfg_scale(Req.from_sampling_params(params)) is not None


def check_nodes(server_args: ServerArgs) -> None:
    """--nnodes, --node-rank and --dist-init-addr fit together and with --num-gpus."""
    nnodes, node_rank, address = server_args.nnodes, server_args.node_rank, server_args.dist_init_addr
    if nnodes < 1 or not 0 <= node_rank < nnodes:
        raise InvalidInputError(f"--node-rank must be in 0..{nnodes - 1} with --nnodes {nnodes}, got {node_rank}")
    if server_args.num_gpus % nnodes:
        raise InvalidInputError(f"--num-gpus {server_args.num_gpus} does not split evenly over --nnodes {nnodes}")
    if nnodes > 1 and address is None:
        raise InvalidInputError("--nnodes > 1 needs --dist-init-addr HOST:PORT (an address of node 0 all nodes reach)")
    if address is not None and not ADDRESS.match(address):
        raise InvalidInputError(f"--dist-init-addr must be HOST:PORT, got {address!r}")


def rank_devices(local_ranks: int, device: str) -> list[str]:
    """The device of each local rank: cuda:i on a CUDA machine (device "auto" or "cuda"), else the CPU (gloo)."""
    if device not in ("auto", "cuda", "cpu"):
        raise InvalidInputError(
            f"a parallel run places its ranks itself: --device must be auto, cuda or cpu, not {device}"
        )
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return ["cpu"] * local_ranks
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local_ranks > visible:
        raise InvalidInputError(
            f"this node is asked to run {local_ranks} GPU ranks, but {visible} GPU{'s are' if visible != 1 else ' is'} "
            "visible (CUDA_VISIBLE_DEVICES, torch.cuda.device_count()): lower --num-gpus"
        )
    return [f"cuda:{i}" for i in range(local_ranks)]
