"""Decoder families on tf_mha's layers, read from KerasHub.

`transformer`: the Llama / Mistral / Qwen2 decoder (`DecoderConfig`,
`CausalLM`, with the step interface of `tf_mha.export.decoder_signatures`);
`keras_hub`: a KerasHub preset directory or `CausalLM` -> that decoder with
the same weights and the preset's tokenizer (`keras_hub.load`);
`random_presets`: KerasHub presets with random weights, for tests and
benchmarks.

May import layers, ops and `tf_mha`; not export (which serves these
models), demo, training, benchmarks or cli.
"""
