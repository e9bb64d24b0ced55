"""The base of every component config: a typed dataclass filled from a Diffusers `config.json`."""

import dataclasses
from typing import Any, Self


@dataclasses.dataclass
class ModelConfig:
    """Architecture fields named as in the component's Diffusers `config.json`."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Builds the config from a `config.json` dict, ignoring keys it does not know (`_class_name`, ...)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})
