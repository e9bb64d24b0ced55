"""Fits TeaCache's rescaling polynomial for a DiT family: from the relative L1 change, between consecutive steps, of
the first block's modulated input to that of the model's output.

    python benchmarks/fit_teacache.py --kind sd3            # a tiny random-weight folder of easel.testing
    python benchmarks/fit_teacache.py --model-path DIR      # a real checkpoint, where one is at hand

Prints the coefficients (highest power first, as easel/runtime/cache/teacache.py keeps them) and how well they fit.
The requests run without CFG, so that every DiT call is the conditional branch and consecutive calls are steps.
"""

import argparse
import tempfile

import numpy as np
import torch

from easel import DiffGenerator
from easel.runtime.models.dits.block_stack import BlockStack, BlockStackDiT

PROMPTS = ("a red circle on the left", "a blue square at the top", "a green triangle on a white background")
# Each family's smallest request without CFG, as its tiny folder takes it.
REQUESTS = {
    "flux": {"height": 64, "width": 64},
    "sd3": {"height": 64, "width": 64, "guidance_scale": 1.0},
    "z-image": {"height": 64, "width": 64, "guidance_scale": 1.0},
    "qwen-image": {"height": 64, "width": 64},
    "wan-t2v": {"height": 48, "width": 80, "num_frames": 5, "guidance_scale": 1.0},
}


class Recorder:
    """Stands in for a step cache: runs the whole stack, keeping each step's modulated input and output."""

    def __init__(self):
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def run(self, dit: BlockStackDiT, stack: BlockStack) -> None:
        self.inputs.append(dit.modulated_input(stack).float())
        dit.run_blocks(stack, 0, dit.num_blocks)
        self.outputs.append(dit.finish(stack).float())

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        def changes(values: list[torch.Tensor]) -> np.ndarray:
            steps = zip(values[:-1], values[1:], strict=True)
            return np.array([float((b - a).abs().mean() / a.abs().mean()) for a, b in steps])

        return changes(self.inputs), changes(self.outputs)


def fit(generator: DiffGenerator, request: dict, steps: int, degree: int) -> tuple[np.ndarray, float]:
    """The coefficients, and the fit's mean absolute error relative to the mean output change."""
    transformer = generator.pipeline.modules["transformer"]
    forward = transformer.forward
    xs, ys = [], []
    for seed, prompt in enumerate(PROMPTS):
        recorder = Recorder()
        transformer.forward = lambda *args, **kwargs: forward(*args, cache=recorder, **kwargs)  # noqa: B023
        try:
            generator.generate(prompt, seed=seed, num_inference_steps=steps, output_type="latent", **request)
        finally:
            transformer.forward = forward
        x, y = recorder.pairs()
        xs.append(x)
        ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    coefficients = np.polyfit(x, y, degree)
    return coefficients, float(np.abs(np.polyval(coefficients, x) - y).mean() / y.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=sorted(REQUESTS), help="a tiny easel.testing folder of this family")
    parser.add_argument("--model-path", help="a model folder (then --kind picks the request shape, default flux)")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--degree", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    kind = args.kind or "flux"
    with tempfile.TemporaryDirectory() as tmp:
        if args.model_path is None:
            from easel.testing import build_tiny_pipeline

            path = build_tiny_pipeline(kind, f"{tmp}/{kind}")
        else:
            path = args.model_path
        generator = DiffGenerator.from_pretrained(path, progress_bar=False)
        coefficients, error = fit(generator, REQUESTS[kind], args.steps, args.degree)
    print(f"{kind}: coefficients {tuple(float(f'{c:.8e}') for c in coefficients)}; mean abs error {error:.1%}")


if __name__ == "__main__":
    main()
