"""KerasHub presets with random weights, made here (no weights can be
downloaded): a backbone of any size, a tokenizer trained on generated text,
saved with `save_to_preset` as a user's fine-tuned model would be. The tests,
the benchmark and the README's example start from them.

  path = random_presets.save("llama", "/tmp/tiny_llama", hidden_dim=64)
"""

import io
import json
import os

import numpy as np

# family -> (KerasHub CausalLM class, backbone class, tokenizer kind)
FAMILIES = {"llama": ("LlamaCausalLM", "LlamaBackbone", "sentencepiece"),
            "llama3": ("Llama3CausalLM", "Llama3Backbone", "bpe"),
            "mistral": ("MistralCausalLM", "MistralBackbone", "sentencepiece"),
            "qwen2": ("QwenCausalLM", "QwenBackbone", "bpe")}
_SIZES = dict(num_layers=2, hidden_dim=32, num_query_heads=4,
              num_key_value_heads=2, intermediate_dim=64)
_WORDS = ("the a cat dog sat ran on under big small red mat box sun moon "
          "tree river stone fox owl bird fish blue green old new quick slow "
          "jumps over lazy brown and or but if then 0 1 2 3 4 5 6 7 8 9 . , ! ?")


def texts(count=3000, seed=0):
  """Generated sentences over a small vocabulary, every ASCII letter in it."""
  rng = np.random.default_rng(seed)
  words = _WORDS.split() + list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
  return [" ".join(rng.choice(words, rng.integers(3, 12))) for _ in range(count)]


def sentencepiece_proto(size=300):
  """A SentencePiece BPE model with Llama's special ids (`<unk>` 0, `<s>` 1,
  `</s>` 2), trained on `texts()`."""
  import sentencepiece  # pylint: disable=g-import-not-at-top
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(texts()), model_writer=model, vocab_size=size,
      model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
      hard_vocab_limit=False, byte_fallback=False, minloglevel=2)
  return model.getvalue()


def byte_pair_vocabulary(size=400, special_tokens=("<|endoftext|>",)):
  """`(vocabulary, merges)` of a byte-level BPE trained on `texts()`, the
  special tokens last (as Qwen's and Llama 3's)."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.train_from_iterator(texts(), tokenizers.trainers.BpeTrainer(
      vocab_size=size, show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  model = json.loads(bpe.to_str())["model"]
  vocabulary = dict(model["vocab"])
  for token in special_tokens:
    vocabulary[token] = len(vocabulary)
  merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
  return vocabulary, merges


def causal_lm(family, *, seed=0, vocabulary_size=None, **backbone_kwargs):
  """A KerasHub CausalLM of `family` (`FAMILIES`) with random weights (seeded),
  its tokenizer and preprocessor; `backbone_kwargs` override the tiny sizes."""
  os.environ.setdefault("KERAS_BACKEND", "tensorflow")
  import keras  # pylint: disable=g-import-not-at-top
  import keras_hub  # pylint: disable=g-import-not-at-top
  if family not in FAMILIES:
    raise ValueError(f"`family` must be one of {sorted(FAMILIES)}. "
                     f"Received: family={family!r}")
  task, backbone_class, kind = FAMILIES[family]
  models = keras_hub.models
  if kind == "sentencepiece":
    tokenizer = getattr(models, task.replace("CausalLM", "Tokenizer"))(
        proto=sentencepiece_proto())
  elif family == "llama3":
    vocabulary, merges = byte_pair_vocabulary(special_tokens=(
        "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
        "<|end_header_id|>", "<|eot_id|>"))
    tokenizer = models.Llama3Tokenizer(vocabulary=vocabulary, merges=merges)
  else:
    vocabulary, merges = byte_pair_vocabulary()
    tokenizer = models.QwenTokenizer(vocabulary=vocabulary, merges=merges)
  keras.utils.set_random_seed(seed)
  sizes = {**_SIZES, **backbone_kwargs}
  backbone = getattr(models, backbone_class)(
      vocabulary_size=vocabulary_size or tokenizer.vocabulary_size(), **sizes)
  _randomize(backbone, np.random.default_rng(seed))
  preprocessor = getattr(models, task + "Preprocessor")(tokenizer)
  return getattr(models, task)(backbone, preprocessor)


def _randomize(backbone, rng):
  """Every weight drawn so that a misplaced one shows: embeddings N(0, 1),
  kernels N(0, 1 / fan-in), norm scales 1 + N(0, 0.1), biases N(0, 0.1)
  (KerasHub's initial ones and zeros would hide a swapped scale or bias, and
  its small embeddings make near-ties of the logits)."""
  for weight in backbone.weights:
    shape, name = tuple(weight.shape), weight.path
    if "scale" in name:
      value = 1 + 0.1 * rng.standard_normal(shape)
    elif "bias" in name:
      value = 0.1 * rng.standard_normal(shape)
    elif "embeddings" in name:
      value = rng.standard_normal(shape)
      if "reverse" in name:
        value /= np.sqrt(shape[0])
    else:
      value = rng.standard_normal(shape) / np.sqrt(shape[0])
    weight.assign(value.astype("float32"))


def save(family, directory, *, seed=0, vocabulary_size=None, **backbone_kwargs):
  """Saves `causal_lm(...)` as a preset directory; returns `directory`."""
  causal_lm(family, seed=seed, vocabulary_size=vocabulary_size,
            **backbone_kwargs).save_to_preset(directory)
  return directory
