"""`LoRAPipeline`: the mixin through which every pipeline takes LoRA adapters, on its DiT(s) and text encoders.

Adapters stay loaded side by side; `set_lora` chooses which apply, at which strengths. Unmerged (the default), each
adapted layer adds its low-rank path at run time, so switching adapters between requests reloads nothing; merged,
the active adapters are written into the weights (no run-time cost) and switching re-merges from the kept originals.
"""

import dataclasses
import logging
from pathlib import Path
from typing import Any

from torch import nn

from easel.errors import InvalidInputError
from easel.runtime.layers.lora import LoRALinear, LoRAWeights
from easel.runtime.loader.lora_loader import DIT, LoRAFile, match_modules, read_lora_file

logger = logging.getLogger(__name__)

DIT_MODULES = ("transformer", "transformer_2")  # Wan2.2-A14B's two experts; other models have the first only


@dataclasses.dataclass
class LoadedLoRA:
    """An adapter as loaded: where from, which modules it adapts, and what in its file matched nothing."""

    name: str
    path: Path
    targets: tuple[str, ...]  # the DiT modules its DiT weights went into
    layers: list[tuple[str, str]]  # (module, path) of each adapted layer
    unmatched_keys: list[str]


class LoRAPipeline:
    """Loads, activates, merges and unloads LoRA adapters on a pipeline's modules (`self.modules`)."""

    modules: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any):
        self._lora_state = _LoRAState()
        super().__init__(*args, **kwargs)

    def load_lora(
        self,
        path: str | Path,
        name: str | None = None,
        strength: float = 1.0,
        target: str | list[str] = "transformer",
    ) -> LoadedLoRA:
        """Loads a LoRA file as adapter `name` (default: the file's stem) and activates it at `strength`.

        `target` chooses the DiT(s) its DiT weights go into: "transformer", "transformer_2" (Wan2.2's low-noise
        expert), "both", or a list. Text-encoder weights go to the text encoders whatever the target.
        """
        if self.server_args.dit_quantization is not None:
            raise InvalidInputError(
                f"LoRA does not combine with dit_quantization={self.server_args.dit_quantization!r}: adapters add to "
                "full-precision weights; load this model without --dit-quantization to use LoRA"
            )
        state = self._lora_state
        name = name or Path(path).stem
        if name in state.loaded:
            raise InvalidInputError(f"a LoRA named {name!r} is already loaded: unload it or pass another name")
        targets = self._lora_targets(target)
        lora_file = read_lora_file(path)
        adapted, unmatched = self._match_lora_file(lora_file, targets)
        if not adapted:
            keys = sorted(unmatched)
            raise InvalidInputError(
                f"no weight of LoRA {path} matches a layer of this {type(self).__name__} (e.g. {keys[:3]}): "
                "it was made for another model"
            )
        for (module_name, layer_path), (model, weights) in adapted.items():
            layer = state.layers.get((module_name, layer_path))
            if layer is None:
                layer = state.layers[module_name, layer_path] = LoRALinear(model.get_submodule(layer_path))
            layer.add(name, weights)
        loaded = LoadedLoRA(
            name, Path(path), targets, list(adapted), sorted(unmatched.union(lora_file.unsupported_keys))
        )
        if loaded.unmatched_keys:
            logger.warning(
                "LoRA %s: %d keys match no layer: %s", name, len(loaded.unmatched_keys), loaded.unmatched_keys
            )
        state.loaded[name] = loaded
        self.set_lora({**state.active, name: strength})
        return loaded

    def set_lora(self, adapters: str | list[str] | dict[str, float] | None, strengths: Any = None) -> None:
        """Chooses the active adapters and their strengths; the others stay loaded but off.

        `adapters` is a name, a list of names or {name: strength}; `strengths` a number or one per name (default
        1.0). None or [] turns every adapter off. Unmerged this costs nothing; merged, the weights are re-merged.
        """
        active = self._lora_strengths(adapters, strengths)
        state = self._lora_state
        state.active = active
        for layer in state.layers.values():
            layer.set_active(active)
            if state.merged:
                layer.merge()

    def merge_lora(self) -> None:
        """Writes the active adapters into the weights: no LoRA cost per step until `unmerge_lora`."""
        state = self._lora_state
        for layer in state.layers.values():
            layer.merge()
        state.merged = True

    def unmerge_lora(self) -> None:
        """Restores every adapted weight bit for bit; adapters apply at run time again."""
        state = self._lora_state
        for layer in state.layers.values():
            layer.unmerge()
        state.merged = False

    def unload_lora(self, name: str | None = None) -> None:
        """Removes adapter `name`, or every adapter; layers left with none become plain layers again."""
        state = self._lora_state
        names = list(state.loaded) if name is None else [name]
        self._check_loaded(names)
        for adapter in names:
            for key in state.loaded.pop(adapter).layers:
                state.layers[key].remove(adapter)
        for key in [key for key, layer in state.layers.items() if not layer.adapters]:
            state.layers.pop(key).detach()
        if not state.loaded:
            state.merged = False  # nothing left to merge: the next adapter starts unmerged, as the first did
        self.set_lora({adapter: s for adapter, s in state.active.items() if adapter in state.loaded})

    def list_loras(self) -> list[dict[str, Any]]:
        """Every loaded adapter: name, path, targets, whether active and at which strength, layers, unmatched keys."""
        state = self._lora_state
        return [
            {
                "name": lora.name,
                "path": str(lora.path),
                "targets": list(lora.targets),
                "active": lora.name in state.active,
                "strength": state.active.get(lora.name),
                "merged": state.merged,
                "num_layers": len(lora.layers),
                "unmatched_keys": lora.unmatched_keys,
            }
            for lora in state.loaded.values()
        ]

    def _match_lora_file(
        self, lora_file: LoRAFile, targets: tuple[str, ...]
    ) -> tuple[dict[tuple[str, str], tuple[nn.Module, LoRAWeights]], set[str]]:
        """{(module, layer path): (module, weights)} for every layer the file adapts, and the keys matching none."""
        adapted = {}
        unmatched: set[str] = set()
        for component in dict.fromkeys(module.component for module in lora_file.modules):
            lora_modules = [module for module in lora_file.modules if module.component == component]
            for module_name in targets if component == DIT else (component,):
                model = self.modules.get(module_name)
                if not isinstance(model, nn.Module):  # e.g. text-encoder weights for a model without that encoder
                    unmatched.update(module.key for module in lora_modules)
                    continue
                family = type(model).__name__ if component == DIT else ""
                matched, missed = match_modules(lora_modules, model, family)
                unmatched.update(missed)
                adapted.update({(module_name, layer): (model, weights) for layer, weights in matched.items()})
        return adapted, unmatched

    def _lora_targets(self, target: str | list[str]) -> tuple[str, ...]:
        present = [name for name in DIT_MODULES if name in self.modules]
        targets = present if target == "both" else [target] if isinstance(target, str) else list(target)
        if not targets or any(name not in present for name in targets):
            raise InvalidInputError(f"LoRA target {target!r} is not a DiT of this model; it has {present} (or 'both')")
        return tuple(targets)

    def _lora_strengths(self, adapters: str | list[str] | dict[str, float] | None, strengths: Any) -> dict[str, float]:
        if isinstance(adapters, dict):
            active = dict(adapters)
        else:
            names = [] if adapters is None else [adapters] if isinstance(adapters, str) else list(adapters)
            values = [1.0 if strengths is None else strengths] * len(names)
            if isinstance(strengths, list | tuple):
                if len(strengths) != len(names):
                    raise InvalidInputError(f"{len(names)} LoRA names but {len(strengths)} strengths")
                values = list(strengths)
            active = dict(zip(names, values, strict=True))
        self._check_loaded(list(active))
        for name, value in active.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise InvalidInputError(f"LoRA strength of {name!r} must be a number, got {value!r}")
        return {name: float(value) for name, value in active.items()}

    def _check_loaded(self, names: list[str]) -> None:
        loaded = self._lora_state.loaded
        if unknown := [name for name in names if name not in loaded]:
            raise InvalidInputError(f"no LoRA named {unknown}; loaded: {sorted(loaded)}")


@dataclasses.dataclass
class _LoRAState:
    """A pipeline's adapters: each loaded file, each adapted layer, the active strengths, merged or not."""

    loaded: dict[str, LoadedLoRA] = dataclasses.field(default_factory=dict)
    layers: dict[tuple[str, str], LoRALinear] = dataclasses.field(default_factory=dict)
    active: dict[str, float] = dataclasses.field(default_factory=dict)
    merged: bool = False
