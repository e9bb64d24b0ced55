"""What the tests of every tiny builder in easel.testing share: prompts, thresholds, loading, and weight checks."""

import pathlib

import torch
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import load_file

PROMPT = "a red circle on a blue background"
OTHER_PROMPT = "a cat"
NEGATIVE_PROMPT = "blurry, low quality"
# Downstream parity tests compare at 1e-4 and need a prompt change to move pixels by 10x that; ask for 100x.
MIN_CONDITIONING_EFFECT = 1e-2


def load_reference(pipeline_cls: type, folder: pathlib.Path, **components):
    """The folder loaded by its Diffusers pipeline class, quietly."""
    diffusers_logging.disable_progress_bar()
    pipeline = pipeline_cls.from_pretrained(folder, **components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def safetensors_tensors(folder: pathlib.Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file under `folder`, keyed by file and name."""
    return {
        f"{file.relative_to(folder)}:{name}": tensor
        for file in sorted(folder.rglob("*.safetensors"))
        for name, tensor in load_file(file).items()
    }


def assert_same_weights(first: pathlib.Path, second: pathlib.Path) -> None:
    expected, actual = safetensors_tensors(first), safetensors_tensors(second)
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[name], expected[name]) for name in expected)


def assert_other_weights(first: pathlib.Path, second: pathlib.Path) -> None:
    expected, actual = safetensors_tensors(first), safetensors_tensors(second)
    assert any(not torch.equal(actual[name], expected[name]) for name in expected)
