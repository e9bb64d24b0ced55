"""Easel's quality measure: generate the fixed prompt lists through Easel and judge every image.

    python -m easel.demo.evaluate [--model-path easel/demo/model] [--count 100]

Prints the accuracy per attribute for prompts of seen combinations and of held-out ones.
"""

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from easel import DiffGenerator
from easel.demo import DEMO_MODEL_PATH
from easel.demo.checker import ATTRIBUTES, attribute_accuracy
from easel.demo.scenes import evaluation_prompts

_BATCH = 25  # prompts per generate call; batch b uses seed b, so the images do not depend on the list's length


def accuracy(generator: DiffGenerator, prompts: Sequence[str], **sampling: Any) -> dict[str, float]:
    """The fraction of `prompts` whose image shows each stated attribute, from one image per prompt."""
    images = []
    for batch, start in enumerate(range(0, len(prompts), _BATCH)):
        images += generator.generate(list(prompts[start : start + _BATCH]), seed=batch, **sampling).images
    return attribute_accuracy(images, prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", type=Path, default=DEMO_MODEL_PATH)
    parser.add_argument("--count", type=int, default=100, help="prompts per list (seen, held-out)")
    parser.add_argument("--num-inference-steps", type=int, default=None, help="default: the folder's")
    # One thread by default: on a shared 2-core machine two threads mostly wait on each other.
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = DiffGenerator.from_pretrained(str(args.model_path), progress_bar=False)
    # The folder's own sampling defaults apply (`_easel_sampling_defaults` of its model_index.json).
    sampling = {"num_inference_steps": args.num_inference_steps}
    print(f"{args.model_path}: {generator.sampling_defaults.updated(**sampling)}")
    print(f"{'prompts':<10}" + "".join(f"{attribute:>12}" for attribute in ATTRIBUTES))
    for name, held_out in (("seen", False), ("held-out", True)):
        start = time.perf_counter()
        result = accuracy(generator, evaluation_prompts(held_out, args.count), **sampling)
        row = "".join(f"{result[attribute]:>12.1%}" for attribute in ATTRIBUTES)
        print(f"{name:<10}{row}   ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
