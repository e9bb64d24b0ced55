"""Block-causal generation with and without its KV cache: the cost of a DMD step of each frame block, in one run.

    python benchmarks/bench_causal.py                                   # 81 frames of 160x288, 4 layers (~1 min)
    python benchmarks/bench_causal.py --height 240 --width 416 --layers 8 --json build/bench/causal.json
    python benchmarks/bench_causal.py --smoke                           # CI: 2 tiny blocks (seconds)

What it measures. A random-weight self-forcing Wan (`wan-causal`: the medium Wan2.1 DiT of easel.testing, width 512
in 4 heads of 128, with `--layers` blocks; tiny text encoder and VAE) makes one video through Easel's
`CausalDMDDenoisingStage`: each block of 3 latent frames runs the 4 DMD steps over its own tokens, attending to the
KV cache of the blocks before it, then one recording forward writes its keys and values into the cache (not after
the last block). Every forward is timed (the stage's step: the DiT, the DMD update and the bookkeeping).

Without the cache, the same model must run each step over the whole video so far, the earlier blocks clean at
timestep 0 and the current one noisy, under a block-causal mask (what the tests' reference does, and what a
block-causal model without a cache costs): one such forward per block is timed, on the same weights, inputs and
threads (the first block alone needs neither the mask nor per-token timesteps). Both run under
torch.inference_mode: the cached steps of a second video after a warm-up one, each no-cache forward the median of
`--repeats` after a warm-up forward.

Per block: the tokens its queries attend to, ms per DMD step with the cache and without, their ratio, and the
block's whole cost with the cache (its steps plus its recording forward) against without (its steps). The first
block attends to nothing cached, so its recording forward makes the cache lose there; from the second block on the
no-cache forward grows with the video while the cached one stays one block wide.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from easel import DiffGenerator
from easel.runtime.distributed.cfg_parallel import run_passes
from easel.testing.wan import MEDIUM_WAN_TRANSFORMER_CONFIG, build_wan_causal_pipeline

PROMPT = "a red circle drifting right"


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() over `repeats` calls after one warm-up call."""
    fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def masked_forward(model, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, freqs, mask: torch.Tensor):
    """The plain Wan forward over x (1, C, f, h, w) with per-token timesteps t and a (1, L, L) attention mask."""
    stack = model.embed(x, t, embeds, freqs)
    stack.attn_mask = mask
    model.run_blocks(stack, 0, model.num_blocks)
    return model.finish(stack)


def block_causal_mask(block_ends: list[int], frames: int, tokens_per_frame: int) -> torch.Tensor:
    """(1, L, L) over the first `frames` frames: a token sees the tokens of its own block and the earlier ones."""
    ends = torch.tensor(block_ends)
    frame = torch.arange(frames)
    query_end = ends[torch.bucketize(frame, ends, right=True)].repeat_interleave(tokens_per_frame)
    key_frame = frame.repeat_interleave(tokens_per_frame)
    return (key_frame[None, :] < query_end[:, None])[None]


def measure(args: argparse.Namespace, folder: Path) -> list[dict]:
    generator = DiffGenerator.from_pretrained(folder, progress_bar=False)
    request = {"prompt": PROMPT, "height": args.height, "width": args.width, "num_frames": args.num_frames}
    generator.generate(**request, output_type="latent")  # a warm-up video
    (started,) = generator.start_many([{**request, "output_type": "latent"}])
    run = started.run
    model = generator.pipeline.get_module("transformer")
    blocks, tokens_per_frame = run.blocks, run.tokens_per_frame
    embeds = run.batch.prompt_embeds[0]
    cached: dict[int, list[float]] = {block: [] for block in range(len(blocks))}
    recording: dict[int, float] = {}
    with torch.inference_mode():
        while not run.done:  # the stage as it runs: every forward timed once (each step of a block costs the same)
            block, step = run.plan[run.step]
            start = time.perf_counter()
            run.advance(run_passes(run.predict, run.passes()))
            seconds = time.perf_counter() - start
            if step is None:
                recording[block] = seconds
            else:
                cached[block].append(seconds)
        rows = []
        ends = [start + size for start, size in blocks]
        _, _, _, height, width = run.latents.shape
        for block, (start, size) in enumerate(blocks):
            end = start + size
            x = run.latents[:, :, :end].to(run.dtype)
            # The earlier blocks are clean (timestep 0), the current one noisy: one timestep per token.
            t = torch.where(torch.arange(end).repeat_interleave(tokens_per_frame) >= start, 750.0, 0.0)[None]
            freqs = model.rotary_emb(end, height, width)
            # The first block alone is a plain forward: one timestep, no mask, as a no-cache engine would run it.
            mask = block_causal_mask(ends, end, tokens_per_frame) if block else None
            t = t if block else torch.tensor([750.0])
            full = timed(
                lambda x=x, t=t, freqs=freqs, mask=mask: masked_forward(model, x, t, embeds, freqs, mask), args.repeats
            )
            step_cached = statistics.median(cached[block])
            steps = len(cached[block])
            rows.append(
                {
                    "block": block,
                    "attended_tokens": end * tokens_per_frame,
                    "query_tokens": size * tokens_per_frame,
                    "no_cache_ms_per_step": 1000 * full,
                    "cached_ms_per_step": 1000 * step_cached,
                    "step_speedup": full / step_cached,
                    "no_cache_ms_per_block": 1000 * full * steps,
                    "cached_ms_per_block": 1000 * (step_cached * steps + recording.get(block, 0.0)),
                }
            )
    return rows


def report(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"causal Wan, {args.layers} layers of width 512, {args.height}x{args.width}, {args.num_frames} frames, "
        f"torch threads {torch.get_num_threads()}",
        "",
        "| block | keys attended | no cache ms/step | cached ms/step | step speed-up | no cache ms/block | "
        "cached ms/block (incl. recording) | block speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['block']} | {row['attended_tokens']} | {row['no_cache_ms_per_step']:.1f} | "
            f"{row['cached_ms_per_step']:.1f} | {row['step_speedup']:.2f}x | {row['no_cache_ms_per_block']:.0f} | "
            f"{row['cached_ms_per_block']:.0f} | {row['no_cache_ms_per_block'] / row['cached_ms_per_block']:.2f}x |"
        )
    total_full = sum(row["no_cache_ms_per_block"] for row in rows)
    total_cached = sum(row["cached_ms_per_block"] for row in rows)
    lines += [
        "",
        f"whole video: no cache {total_full:.0f} ms, cached {total_cached:.0f} ms, {total_full / total_cached:.2f}x",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=288)
    parser.add_argument("--num-frames", type=int, default=81)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed no-cache forwards per block, after a warm-up")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--smoke", action="store_true", help="2 blocks of a 2-layer DiT at 32x48: runs in seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.height, args.width, args.num_frames, args.layers, args.repeats = 32, 48, 21, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="easel-bench-causal-") as scratch:
        config = {**MEDIUM_WAN_TRANSFORMER_CONFIG, "num_layers": args.layers}
        folder = build_wan_causal_pipeline(Path(scratch) / "wan-causal", 0, transformer_config=config)
        rows = measure(args, folder)
    print(report(rows, args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
