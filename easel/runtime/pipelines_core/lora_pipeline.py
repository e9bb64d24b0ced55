"""`LoRAPipeline`: the mixin through which every pipeline will take LoRA adapters."""


class LoRAPipeline:
    """Marks a pipeline whose DiT accepts LoRA adapters; loading them arrives with the LoRA work."""
