"""Model resolution and loading: families by id / folder name / detector, sharded weights, Hugging Face ids."""

import json
import shutil

import diffusers
import numpy as np
import pytest
import torch

from easel import DiffGenerator
from easel.errors import ModelLoadError
from easel.runtime.loader.model_path import resolve_model_path

SMALL = {"height": 32, "width": 32, "num_inference_steps": 1, "output_type": "np"}


def test_family_from_folder_name_and_detector(tiny_pipeline, tmp_path):
    named = shutil.copytree(tiny_pipeline("flux-schnell"), tmp_path / "FLUX.1-schnell")
    assert DiffGenerator.from_pretrained(named).family.name == "flux-schnell"
    # An unnamed FluxPipeline folder falls back to the first family that detects it.
    assert DiffGenerator.from_pretrained(tiny_pipeline("flux-schnell")).family.name == "flux"


def test_sharded_transformer_loads_the_same(tiny_pipeline, tmp_path):
    folder = shutil.copytree(tiny_pipeline("flux"), tmp_path / "sharded")
    transformer = diffusers.FluxTransformer2DModel.from_pretrained(folder / "transformer")
    shutil.rmtree(folder / "transformer")
    transformer.save_pretrained(folder / "transformer", max_shard_size="20KB")
    assert len(list((folder / "transformer").glob("*.safetensors"))) > 1

    whole = DiffGenerator.from_pretrained(tiny_pipeline("flux"), progress_bar=False)
    sharded = DiffGenerator.from_pretrained(folder, progress_bar=False)
    whole_weights = whole.pipeline.get_module("transformer").state_dict()
    sharded_weights = sharded.pipeline.get_module("transformer").state_dict()
    assert all(torch.equal(whole_weights[name], sharded_weights[name]) for name in whole_weights)
    # Not bit-identical: kernels may sum in another order for differently aligned tensors.
    assert np.allclose(whole.generate("a cat", **SMALL).images, sharded.generate("a cat", **SMALL).images, atol=1e-6)


def test_missing_shard_is_named(tiny_pipeline, tmp_path):
    folder = shutil.copytree(tiny_pipeline("flux"), tmp_path / "sharded")
    transformer = diffusers.FluxTransformer2DModel.from_pretrained(folder / "transformer")
    shutil.rmtree(folder / "transformer")
    transformer.save_pretrained(folder / "transformer", max_shard_size="20KB")
    last_shard = sorted((folder / "transformer").glob("*.safetensors"))[-1]
    last_shard.unlink()
    with pytest.raises(ModelLoadError, match=f"{last_shard.name} is listed in the shard index but missing"):
        DiffGenerator.from_pretrained(folder)


def test_component_missing_from_model_index(tiny_pipeline, tmp_path):
    folder = shutil.copytree(tiny_pipeline("flux"), tmp_path / "model")
    index = (folder / "model_index.json").read_text().replace('"text_encoder_2"', '"unused_entry"')
    (folder / "model_index.json").write_text(index)
    with pytest.raises(ModelLoadError, match="lists no text_encoder_2, which FluxPipeline needs"):
        DiffGenerator.from_pretrained(folder)


def test_uncached_hf_id_says_what_to_download(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="huggingface-cli download easel-tests/no-such-model"):
        resolve_model_path("easel-tests/no-such-model")


def test_folder_sampling_defaults_override_the_family(tiny_pipeline, tmp_path):
    folder = shutil.copytree(tiny_pipeline("flux"), tmp_path / "with-defaults")
    index = json.loads((folder / "model_index.json").read_text())
    index["_easel_sampling_defaults"] = {"height": 32, "width": 48, "num_inference_steps": 1}
    (folder / "model_index.json").write_text(json.dumps(index))

    generator = DiffGenerator.from_pretrained(folder, progress_bar=False)
    assert generator.generate("a cat", output_type="np").images.shape == (1, 32, 48, 3)
    # Diffusers still loads the folder: it ignores keys that start with "_".
    assert diffusers.FluxPipeline.from_pretrained(folder).transformer is not None

    index["_easel_sampling_defaults"] = {"hieght": 32}
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="_easel_sampling_defaults.*hieght"):
        DiffGenerator.from_pretrained(folder)
