"""The network and its weights: Qwen2 in NNX, RoPE, the KV cache, sharded construction, HF import/export,
safetensors IO, tiny offline tokenizers, and where a model comes from (``source``)."""
