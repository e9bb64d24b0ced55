"""LoRA adapters against Diffusers' `load_lora_weights` (+ `set_adapters`): FLUX, Qwen-Image and Wan, in the
Diffusers/PEFT and kohya layouts, merged and unmerged; and the adapter life cycle, errors, API and CLI."""

import dataclasses
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from easel import DiffGenerator
from easel.cli.main import main
from easel.errors import InvalidInputError, ModelLoadError
from easel.runtime.loader.lora_loader import resolve_lora_path
from easel.testing.lora import build_lora_file
from tests.parity import TOLERANCE, easel_output, reference_images

PROMPT, SEED = "a red circle on a blue background", 0
IMAGE = {"height": 64, "width": 64, "num_inference_steps": 2}
VIDEO = {**IMAGE, "num_frames": 5, "guidance_scale": 5.0, "negative_prompt": "blurry"}


@dataclasses.dataclass(frozen=True)
class Family:
    """A tiny kind's Diffusers pipeline, its request, and how its PEFT-layout files carry alpha."""

    reference_cls: type
    request: dict
    # FLUX reads `.alpha` keys; Diffusers' Wan loader refuses them and its Qwen-Image loader expects them on bare
    # names only, so those two get alpha through the adapter metadata that Diffusers itself writes.
    peft_alphas: str
    text_encoder: bool = False


FAMILIES = {
    "flux": Family(diffusers.FluxPipeline, {**IMAGE, "guidance_scale": 3.5}, "keys", text_encoder=True),
    "qwen-image": Family(
        diffusers.QwenImagePipeline, {**IMAGE, "negative_prompt": "blurry", "true_cfg_scale": 4.0}, "metadata"
    ),
    "flux2-klein-base": Family(
        diffusers.Flux2KleinPipeline, {**IMAGE, "guidance_scale": 4.0, "max_sequence_length": 32}, "metadata"
    ),
    "wan-t2v": Family(diffusers.WanPipeline, VIDEO, "metadata"),
    "wan2.2-a14b": Family(diffusers.WanPipeline, VIDEO, "metadata"),
}


@dataclasses.dataclass(frozen=True)
class Adapter:
    """One adapter of a case: its file, name, strength and (Wan2.2) the DiTs it goes into."""

    path: Path
    name: str
    strength: float
    target: str = "transformer"


@pytest.fixture(scope="module")
def engines(tiny_pipeline):
    """`engines(kind)` -> (Easel generator, Diffusers pipeline, folder), loaded once per module."""
    loaded = {}

    def get(kind: str):
        if kind not in loaded:
            folder = tiny_pipeline(kind)
            reference = FAMILIES[kind].reference_cls.from_pretrained(folder)
            reference.set_progress_bar_config(disable=True)
            loaded[kind] = DiffGenerator.from_pretrained(folder, progress_bar=False), reference, folder
        return loaded[kind]

    return get


@pytest.fixture(scope="module")
def lora_file(tiny_pipeline, tmp_path_factory):
    """`lora_file(kind, layout, seed=..., alphas=..., text_encoder=...)` -> a LoRA file for that tiny folder."""
    root = tmp_path_factory.mktemp("loras")
    built = {}

    def get(kind: str, layout: str, seed: int = 1, alphas: str | None = None, text_encoder: bool | None = None):
        family = FAMILIES[kind]
        alphas = alphas or family.peft_alphas
        text_encoder = family.text_encoder if text_encoder is None else text_encoder
        key = (kind, layout, seed, alphas, text_encoder)
        if key not in built:
            path = root / f"{kind}-{layout}-{seed}-{alphas}-{int(text_encoder)}.safetensors"
            built[key] = build_lora_file(
                tiny_pipeline(kind), path, layout=layout, alphas=alphas, seed=seed, text_encoder=text_encoder
            )
        return built[key]

    return get


def diffusers_output(reference, request: dict, adapters: list[Adapter]) -> np.ndarray:
    reference.unload_lora_weights()
    try:
        for adapter in adapters:
            for into_2 in {"transformer": [False], "transformer_2": [True], "both": [False, True]}[adapter.target]:
                kwargs = {"load_into_transformer_2": True} if into_2 else {}
                reference.load_lora_weights(str(adapter.path), adapter_name=adapter.name, **kwargs)
        reference.set_adapters([a.name for a in adapters], adapter_weights=[a.strength for a in adapters])
        return reference_images(reference, SEED, prompt=PROMPT, **request)
    finally:
        reference.unload_lora_weights()


def check_parity(engines, kind: str, adapters: list[Adapter], label: str) -> None:
    """Easel unmerged and merged against Diffusers; then a strength change must move Easel's output."""
    easel, reference, _ = engines(kind)
    request = FAMILIES[kind].request
    theirs = diffusers_output(reference, request, adapters)
    try:
        for adapter in adapters:
            easel.load_lora(adapter.path, name=adapter.name, strength=adapter.strength, target=adapter.target)
        unmerged = easel_output(easel, PROMPT, SEED, **request)
        easel.merge_lora()
        merged = easel_output(easel, PROMPT, SEED, **request)
        easel.set_lora({**{a.name: a.strength for a in adapters}, adapters[0].name: adapters[0].strength / 2})
        moved = easel_output(easel, PROMPT, SEED, **request)
    finally:
        easel.unload_lora()
    errors = {"unmerged": float(np.abs(unmerged - theirs).max()), "merged": float(np.abs(merged - theirs).max())}
    moves = float(np.abs(moved - merged).max())
    print(f"LORA {kind} {label}: unmerged {errors['unmerged']:.2e} merged {errors['merged']:.2e}", end=" ")
    print(f"strength/2 moves {moves:.2e}")
    assert max(errors.values()) <= TOLERANCE, errors
    assert moves >= 10 * TOLERANCE, "the strength barely moves the output"


@pytest.mark.parametrize("layout", ["peft", "kohya"])
@pytest.mark.parametrize("kind", ["flux", "flux2-klein-base", "qwen-image", "wan-t2v"])
def test_one_adapter_matches_diffusers(engines, lora_file, kind, layout):
    check_parity(engines, kind, [Adapter(lora_file(kind, layout), "one", 0.8)], layout)


@pytest.mark.parametrize("kind", ["flux", "flux2-klein-base", "qwen-image", "wan-t2v"])
def test_two_adapters_match_set_adapters(engines, lora_file, kind):
    adapters = [
        Adapter(lora_file(kind, "peft", seed=2, alphas="none", text_encoder=False), "peft", 0.7),
        Adapter(lora_file(kind, "kohya", seed=3, text_encoder=False), "kohya", -0.5),
    ]
    check_parity(engines, kind, adapters, "peft 0.7 + kohya -0.5")


@pytest.mark.parametrize(("target", "layout"), [("transformer", "peft"), ("transformer_2", "peft"), ("both", "kohya")])
def test_wan22_adapter_targets_either_expert_or_both(engines, lora_file, target, layout):
    check_parity(
        engines, "wan2.2-a14b", [Adapter(lora_file("wan2.2-a14b", layout), "one", 1.0, target)], f"{layout} {target}"
    )


def test_flux_kohya_fused_linear1_splits_into_qkv_and_mlp(engines, tmp_path):
    """Diffusers splits single blocks' linear1 at FLUX.1's full widths only, so this checks it against PEFT."""
    easel, _, _ = engines("flux")
    block = easel.pipeline.get_module("transformer").single_transformer_blocks[1]
    sizes = [block.attn.to_q.out_features] * 3 + [block.proj_mlp.out_features]
    down, up = torch.randn(4, block.attn.to_q.in_features), torch.randn(sum(sizes), 4) * 0.05
    fused = {
        "lora_unet_single_blocks_1_linear1.lora_down.weight": down,
        "lora_unet_single_blocks_1_linear1.alpha": torch.tensor(8.0),
    }
    save_file({**fused, "lora_unet_single_blocks_1_linear1.lora_up.weight": up}, tmp_path / "kohya.safetensors")
    split = {}
    for layer, rows in zip(["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], torch.split(up, sizes), strict=True):
        prefix = f"transformer.single_transformer_blocks.1.{layer}"
        split |= {
            f"{prefix}.lora_A.weight": down.clone(),
            f"{prefix}.lora_B.weight": rows.contiguous(),
            f"{prefix}.alpha": torch.tensor(8.0),
        }
    save_file(split, tmp_path / "peft.safetensors")
    outputs = []
    for name in ("kohya", "peft"):
        easel.load_lora(tmp_path / f"{name}.safetensors")
        try:
            outputs.append(easel_output(easel, PROMPT, SEED, **FAMILIES["flux"].request))
        finally:
            easel.unload_lora()
    plain = easel_output(easel, PROMPT, SEED, **FAMILIES["flux"].request)
    assert np.array_equal(outputs[0], outputs[1])
    assert float(np.abs(outputs[0] - plain).max()) >= 10 * TOLERANCE


def test_merge_unmerge_restores_every_weight_and_unload_the_plain_model(engines, lora_file):
    easel, _, _ = engines("flux")
    modules = {name: easel.pipeline.get_module(name) for name in ("transformer", "text_encoder")}
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in modules.items()}
    plain = easel_output(easel, PROMPT, SEED, **FAMILIES["flux"].request)
    easel.load_lora(lora_file("flux", "peft"), name="a", strength=0.8)
    easel.load_lora(lora_file("flux", "kohya"), name="b", strength=0.5)
    try:
        easel.merge_lora()
        easel.set_lora({"b": 1.5})  # re-merges from the kept originals
        assert not torch.equal(
            modules["transformer"].transformer_blocks[0].attn.to_q.weight,
            before["transformer"]["transformer_blocks.0.attn.to_q.weight"],
        )
        easel.unmerge_lora()
        for name, module in modules.items():
            for key, value in module.state_dict().items():
                assert torch.equal(value, before[name][key]), f"{name}.{key} changed"
        easel.merge_lora()
    finally:
        easel.unload_lora()
    assert easel.list_loras() == []
    for name, module in modules.items():
        assert all(not m._forward_hooks for m in module.modules()), "unload left a hook behind"
        assert all(torch.equal(value, before[name][key]) for key, value in module.state_dict().items())
    assert np.array_equal(easel_output(easel, PROMPT, SEED, **FAMILIES["flux"].request), plain)


def test_unmatched_keys_are_reported_by_name(engines, lora_file, tmp_path, caplog):
    easel, _, _ = engines("flux")
    tensors = load_file(lora_file("flux", "kohya", text_encoder=False))
    tensors["lora_unet_no_such_layer.lora_down.weight"] = torch.zeros(2, 8)
    tensors["lora_unet_no_such_layer.lora_up.weight"] = torch.zeros(8, 2)
    tensors["lora_unet_double_blocks_0_img_attn_proj.diff_b"] = torch.zeros(32)
    save_file(tensors, tmp_path / "extra.safetensors")
    try:
        entry = easel.load_lora(tmp_path / "extra.safetensors")
    finally:
        easel.unload_lora()
    assert entry["unmatched_keys"] == ["lora_unet_double_blocks_0_img_attn_proj.diff_b", "lora_unet_no_such_layer"]
    assert "lora_unet_no_such_layer" in caplog.text


def test_bad_files_raise_clear_errors(engines, lora_file, tmp_path):
    easel, _, _ = engines("flux")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="not a readable safetensors"):
        easel.load_lora(tmp_path / "junk.safetensors")
    with pytest.raises(InvalidInputError, match="does not exist"):
        easel.load_lora(tmp_path / "missing.safetensors")
    save_file({"some.weight": torch.zeros(2)}, tmp_path / "empty.safetensors")
    with pytest.raises(ModelLoadError, match="holds no LoRA weights"):
        easel.load_lora(tmp_path / "empty.safetensors")

    tensors = load_file(lora_file("flux", "peft"))
    tensors["transformer.x_embedder.lora_B.weight"] = tensors["transformer.x_embedder.lora_B.weight"][
        :, :1
    ].contiguous()
    save_file(tensors, tmp_path / "rank.safetensors")
    with pytest.raises(ModelLoadError, match="rank mismatch in transformer.x_embedder"):
        easel.load_lora(tmp_path / "rank.safetensors")
    with pytest.raises(ModelLoadError, match="does not fit"):
        easel.load_lora(lora_file("qwen-image", "kohya"))  # Qwen-Image's layer names, other widths
    with pytest.raises(InvalidInputError, match="matches a layer"):
        easel.load_lora(lora_file("wan-t2v", "kohya"))
    assert easel.list_loras() == []


def test_api_adapter_life_cycle(engines, lora_file):
    easel, _, _ = engines("wan2.2-a14b")
    path = lora_file("wan2.2-a14b", "kohya")
    entry = easel.load_lora(path, strength=0.5, target="both")
    try:
        assert entry == {
            "name": path.stem,
            "path": str(path),
            "targets": ["transformer", "transformer_2"],
            "active": True,
            "strength": 0.5,
            "merged": False,
            "num_layers": 40,
            "unmatched_keys": [],
        }
        with pytest.raises(InvalidInputError, match="already loaded"):
            easel.load_lora(path)
        with pytest.raises(InvalidInputError, match="no LoRA named"):
            easel.set_lora("other")
        with pytest.raises(InvalidInputError, match="is not a DiT"):
            easel.load_lora(path, name="x", target="transformer_3")
        easel.set_lora(None)
        assert easel.list_loras()[0]["active"] is False
        easel.set_lora([path.stem], [2.0])
        assert easel.list_loras()[0]["strength"] == 2.0
    finally:
        easel.unload_lora()


def test_cli_applies_lora_paths_with_strengths(engines, lora_file, tmp_path):
    easel, _, folder = engines("flux")
    path = lora_file("flux", "kohya")
    args = ["generate", "--model-path", str(folder), "--prompt", PROMPT, "--seed", "0", "--height", "64"]
    args += ["--width", "64", "--num-inference-steps", "2", "--lora-path", f"{path}:0.6"]
    assert main([*args, "--output-path", str(tmp_path / "out.png")]) == 0
    easel.load_lora(path, strength=0.6)
    try:
        expected = easel.generate(PROMPT, seed=0, height=64, width=64, num_inference_steps=2).images[0]
    finally:
        easel.unload_lora()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(expected))


def test_resolve_lora_path_stays_inside_the_lora_dir(tmp_path):
    (tmp_path / "loras" / "styles").mkdir(parents=True)
    (tmp_path / "secret.safetensors").write_bytes(b"")
    (tmp_path / "loras" / "link.safetensors").symlink_to(tmp_path / "secret.safetensors")
    root = tmp_path / "loras"
    assert resolve_lora_path(root, "styles/a.safetensors") == (root / "styles" / "a.safetensors").resolve()
    assert resolve_lora_path(root, str(root / "a.safetensors")) == (root / "a.safetensors").resolve()
    for outside in [
        "../secret.safetensors",
        "styles/../../secret.safetensors",
        str(tmp_path / "secret.safetensors"),
        "link.safetensors",
    ]:
        with pytest.raises(InvalidInputError, match="outside the LoRA directory"):
            resolve_lora_path(root, outside)
