"""Parallel efficiency on this CPU, and the communication each layout costs the full-size models on 8 GPUs.

    python benchmarks/bench_parallel.py               # both parts, FLUX and Wan
    python benchmarks/bench_parallel.py --model flux --runs 7
    python benchmarks/bench_parallel.py --predict-only

Measured part: the ~70 M-parameter FLUX DiT at 512x512 (1024 image + 512 text tokens) and the ~70 M-parameter Wan
DiT at 17x256x256 (1280 video tokens, 512 text tokens), random weights, fp32. One process with 2 threads against
2 processes with 1 thread each (gloo), per layout: Ulysses 2, ring 2, CFG 2 (a step = the conditional and the
unconditional pass, as with classifier-free guidance), TP 2. Each layout runs its timed steps in one launch; the
efficiency is T(1 process) / T(2 processes) of the medians, 1.0 being perfect on the same two cores; the
one-process steps are timed again just before each layout.

Predicted part: for FLUX.1-dev at 1024x1024 (one pass a step: guidance-distilled) and Wan2.1-14B at 720p (two
passes a step: CFG), the bytes one rank sends per step for each layout at degree 2/4/8, computed from the shapes
(bf16 activations), what that costs at NVLink bandwidth, and the predicted step time: the single-GPU compute (the
FLOPs at the rate the H200 anchors measured, `../shared/design/performance-anchors.md`) divided by the degree,
plus the communication that cannot overlap (all of Ulysses' and TP's, ring's beyond its compute). A prediction,
not a measurement: one GPU cannot show multi-GPU speed.
"""

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from easel.configs.models.dits.flux import FluxDitConfig
from easel.configs.models.dits.wanvideo import WanDitConfig
from easel.runtime.distributed import ParallelLayout
from easel.runtime.distributed.cfg_parallel import run_passes
from easel.runtime.distributed.launch import run_on_ranks
from easel.runtime.layers.linear import checkpoint_sharder
from easel.runtime.models.dits.flux import FluxTransformer2DModel
from easel.runtime.models.dits.wanvideo import WanTransformer3DModel
from easel.testing import MEDIUM_FLUX_TRANSFORMER_CONFIG
from easel.testing.wan import MEDIUM_WAN_TRANSFORMER_CONFIG

TEXT_TOKENS = 512
LAYOUTS = {
    "ulysses 2": ParallelLayout(ulysses=2),
    "ring 2": ParallelLayout(ring=2),
    "cfg 2": ParallelLayout(cfg=2),
    "tp 2": ParallelLayout(tp=2),
}


#################################################################################
#                       Measured: 1 process x 2 threads vs 2 x 1                #
#################################################################################


@dataclasses.dataclass(frozen=True)
class CpuCase:
    """A benchmark-sized DiT and the forward inputs of one pass."""

    name: str

    def build(self, state_dict: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
        """This rank's model (its TP shards), from the full `state_dict`, or random weights when None."""
        with torch.device("meta"):
            model = self.model()
        if state_dict is None:
            generator = torch.Generator().manual_seed(0)
            state_dict = {
                key: torch.randn(value.shape, generator=generator) * 0.02 for key, value in model.state_dict().items()
            }
        shard = checkpoint_sharder(model)
        model.load_state_dict({key: shard(key, value) for key, value in state_dict.items()}, assign=True)
        return model.eval().requires_grad_(False)

    def model(self) -> torch.nn.Module:
        if self.name == "flux":
            return FluxTransformer2DModel(FluxDitConfig.from_dict({**MEDIUM_FLUX_TRANSFORMER_CONFIG}))
        return WanTransformer3DModel(WanDitConfig.from_dict({**MEDIUM_WAN_TRANSFORMER_CONFIG}))

    def passes(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        """The conditional and the unconditional pass of one CFG step (other prompts, same latents)."""
        generator = torch.Generator().manual_seed(1)
        config = model.config
        if self.name == "flux":
            rows = cols = 32  # 512x512 pixels: 64x64 latents, 2x2 patches
            ids = torch.zeros(rows, cols, 3)
            ids[..., 1], ids[..., 2] = torch.arange(rows)[:, None], torch.arange(cols)[None, :]
            freqs_cis = model.rotary_emb(torch.cat([torch.zeros(TEXT_TOKENS, 3), ids.reshape(-1, 3)]))
            latents = torch.randn(1, rows * cols, config.in_channels, generator=generator)
            return [
                dict(
                    hidden_states=latents,
                    encoder_hidden_states=torch.randn(1, TEXT_TOKENS, config.joint_attention_dim, generator=generator),
                    pooled_projections=torch.randn(1, config.pooled_projection_dim, generator=generator),
                    timestep=torch.tensor([0.5]),
                    guidance=torch.tensor([3.5]) if config.guidance_embeds else None,
                    freqs_cis=freqs_cis,
                )
                for _ in range(2)
            ]
        frames, height, width = 5, 32, 32  # 17x256x256 pixels through Wan's 4x8x8 VAE
        latents = torch.randn(1, config.in_channels, frames, height, width, generator=generator)
        freqs_cis = model.rotary_emb(frames, height, width)
        return [
            dict(
                hidden_states=latents,
                timestep=torch.tensor([500.0]),
                encoder_hidden_states=torch.randn(1, TEXT_TOKENS, config.text_dim, generator=generator),
                freqs_cis=freqs_cis,
            )
            for _ in range(2)
        ]


def _time_steps(case: CpuCase, weights: str, with_cfg: bool, runs: int) -> list[float]:
    """Seconds of each of `runs` steps (after one warm-up), through the denoising loop's pass runner."""
    model = case.build(torch.load(weights))
    passes = case.passes(model)[: 2 if with_cfg else 1]
    group = torch.distributed.group.WORLD if torch.distributed.is_initialized() else None
    seconds = []
    with torch.inference_mode():
        for run in range(runs + 1):
            if group is not None:
                torch.distributed.barrier(group)
            start = time.perf_counter()
            run_passes(lambda kwargs: model(**kwargs), passes)
            if group is not None:
                torch.distributed.barrier(group)
            if run:  # the first step warms up allocators and kernels
                seconds.append(time.perf_counter() - start)
    return seconds


def measure(case: CpuCase, runs: int) -> list[tuple[str, float, float, float]]:
    """(layout, T one process, T two processes, efficiency) for every layout. Each layout's one-process steps are
    timed right before it, so that a machine that speeds up or slows down over the run moves both alike."""
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        weights = str(Path(scratch) / "weights.pt")
        torch.save(case.build().state_dict(), weights)
        for name, layout in LAYOUTS.items():
            with_cfg = layout.cfg > 1
            one = run_on_ranks(_time_steps, ParallelLayout(), case, weights, with_cfg, runs, threads=2)[0]
            per_rank = run_on_ranks(_time_steps, layout, case, weights, with_cfg, runs, threads=1)
            single = statistics.median(one)
            parallel = statistics.median(max(times) for times in zip(*per_rank, strict=True))
            rows.append((name, single, parallel, single / parallel))
            print(f"  {case.name} {name}: measured", flush=True)
    return rows


#################################################################################
#                     Predicted: full-size models on 8 GPUs                     #
#################################################################################

BYTES = 2  # bf16 activations
NVLINK_BYTES_PER_S = 450e9  # H200 NVLink 4: 900 GB/s both ways, so 450 GB/s one way per GPU


@dataclasses.dataclass(frozen=True)
class FullModel:
    """The shapes of one full-size DiT that its FLOPs and communication follow from."""

    name: str
    tokens: int  # tokens of the joint self-attention sequence (text included where it joins)
    text_tokens: int  # cross-attention keys (0 where the text joins the sequence)
    dim: int
    attention_layers: int
    linear_macs_per_token: float  # multiply-accumulates per token of every linear layer of one pass
    # Row-parallel all-reduces of one pass: (how many, tokens each).
    all_reduces: tuple[tuple[int, int], ...]
    passes_per_step: int
    flops_per_s: float  # the rate its single-GPU anchor achieved

    @property
    def flops_per_pass(self) -> float:
        linear = 2 * self.linear_macs_per_token * self.tokens
        attention = 4 * self.tokens * (self.tokens + self.text_tokens) * self.dim * self.attention_layers
        return linear + attention

    def compute_seconds(self) -> float:
        """One step on one GPU."""
        return self.passes_per_step * self.flops_per_pass / self.flops_per_s

    def step_bytes(self, kind: str, degree: int) -> float:
        """Bytes one rank sends per step under one kind of parallelism of `degree` ranks."""
        activation = self.tokens * self.dim * BYTES  # one (L, D) tensor of the whole sequence
        if kind == "ulysses":  # q, k, v and the output, all-to-all: (N - 1) / N of each local shard leaves
            per_pass = 4 * activation / degree * (degree - 1) / degree * self.attention_layers
        elif kind == "ring":  # every K and V shard visits the N - 1 other ranks
            per_pass = 2 * activation / degree * (degree - 1) * self.attention_layers
        elif kind == "tp":  # ring all-reduce: 2 (N - 1) / N of the tensor per rank
            per_pass = sum(count * tokens * self.dim * BYTES for count, tokens in self.all_reduces)
            per_pass *= 2 * (degree - 1) / degree
        else:  # cfg: one all-gather of the prediction, the rest of the degree as Ulysses
            # Each CFG half runs one of the step's passes: its Ulysses traffic is that of one pass.
            ulysses_one_pass = self.step_bytes("ulysses", degree // 2) / self.passes_per_step
            return ulysses_one_pass + self.tokens * 64 * BYTES  # the prediction: ~64 output channels a token
        passes = self.passes_per_step
        return per_pass * passes

    def predicted_step(self, kind: str, degree: int) -> float:
        compute = self.compute_seconds() / degree
        comm = self.step_bytes(kind, degree) / NVLINK_BYTES_PER_S
        if kind == "ring":
            return max(compute, comm)  # K/V blocks travel while the current one is attended to
        return compute + comm


def flux_dev_1024() -> FullModel:
    dim, image, text = 3072, 4096, 512
    double, single = 19, 38
    tokens = image + text
    # Double blocks: qkv 3 D^2, out D^2, MLP 8 D^2 per token of either stream; single: qkv 3, MLP in 4, out 5.
    macs = (double * 12 + single * 12) * dim * dim
    return FullModel(
        "FLUX.1-dev 1024x1024",
        tokens,
        0,
        dim,
        double + single,
        macs,
        ((double * 2, image), (double * 2, text), (single, tokens)),
        passes_per_step=1,
        flops_per_s=74.4e12 / 0.1735,  # the eager anchor: 74.4 TFLOP in 173.5 ms
    )


def wan_14b_720p() -> FullModel:
    dim, ffn, layers, text = 5120, 13824, 40, 512
    tokens = 21 * 45 * 80  # 81 frames, 720x1280: 21 x 90 x 160 latents, 1x2x2 patches
    # Self-attention qkv + out 4 D^2, cross-attention q + out 2 D^2 (k, v on the 512 text tokens only), FFN 2 D F.
    macs = layers * (6 * dim * dim + 2 * dim * ffn)
    return FullModel(
        "Wan2.1-14B 720p (CFG)",
        tokens,
        text,
        dim,
        layers,
        macs,
        ((layers * 3, tokens),),
        passes_per_step=2,
        flops_per_s=514e12,  # the eager anchor at 480p
    )


#################################################################################
#                                    Report                                     #
#################################################################################


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["flux", "wan", "all"], default="all")
    parser.add_argument("--runs", type=int, default=5, help="timed steps per layout (after one warm-up)")
    parser.add_argument("--predict-only", action="store_true", help="skip the CPU measurements")
    args = parser.parse_args()

    if not args.predict_only:
        names = ["flux", "wan"] if args.model == "all" else [args.model]
        results = {name: measure(CpuCase(name), args.runs) for name in names}
        print("\nCPU, fp32: one process with 2 threads vs 2 processes with 1 thread each (medians)")
        print("| model | layout | T 1 process (s) | T 2 processes (s) | efficiency |\n|---|---|---|---|---|")
        for name, rows in results.items():
            for layout, single, parallel, efficiency in rows:
                print(f"| {name} | {layout} | {single:.3f} | {parallel:.3f} | {efficiency:.2f} |")

    print(f"\nPredicted per step on H200s, bf16, NVLink {NVLINK_BYTES_PER_S / 1e9:.0f} GB/s one way per GPU")
    print("| model | 1 GPU (s) | layout | degree | sent per rank (GB) | comm (ms) | predicted step (s) | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for model in (flux_dev_1024(), wan_14b_720p()):
        one = model.compute_seconds()
        for kind in ("ulysses", "ring", "cfg", "tp"):
            if kind == "cfg" and model.passes_per_step == 1:
                continue  # guidance-distilled: no unconditional pass to put on the other half
            for degree in (2, 4, 8):
                sent = model.step_bytes(kind, degree)
                step = model.predicted_step(kind, degree)
                print(
                    f"| {model.name} | {one:.3f} | {kind} | {degree} | {sent / 1e9:.2f} | "
                    f"{sent / NVLINK_BYTES_PER_S * 1e3:.1f} | {step:.3f} | {one / step:.2f}x |"
                )


if __name__ == "__main__":
    main()
