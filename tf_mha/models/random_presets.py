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
            "qwen2": ("QwenCausalLM", "QwenBackbone", "bpe"),
            "gemma3": ("Gemma3CausalLM", "Gemma3Backbone", "sentencepiece")}
# SentencePiece's special pieces: Llama's, and Gemma's (ids and turn tokens).
_LLAMA_PIECES = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
_GEMMA_PIECES = dict(
    pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
    eos_piece="<eos>", bos_piece="<bos>",
    user_defined_symbols=["<start_of_turn>", "<end_of_turn>", "<img>",
                          "<start_of_image>", "<end_of_image>"])
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


def sentencepiece_proto(size=None, gemma=False):
  """A SentencePiece BPE model with Llama's special ids (`<unk>` 0, `<s>` 1,
  `</s>` 2; or Gemma's, with its turn and image tokens), trained on
  `texts()`; with `size`, filler pieces (`▁x<i>`, never chosen over the
  trained ones) make up `size` pieces."""
  import sentencepiece  # pylint: disable=g-import-not-at-top
  from sentencepiece import sentencepiece_model_pb2 as pb  # pylint: disable=g-import-not-at-top
  trained = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(texts()), model_writer=trained, vocab_size=300,
      model_type="bpe", hard_vocab_limit=False, byte_fallback=False,
      minloglevel=2, **(_GEMMA_PIECES if gemma else _LLAMA_PIECES))
  model = pb.ModelProto.FromString(trained.getvalue())
  for i in range(len(model.pieces), size or 0):
    model.pieces.add(piece=f"\u2581x{i}", score=-1e6 - i,
                     type=pb.ModelProto.SentencePiece.NORMAL)
  model.trainer_spec.vocab_size = len(model.pieces)
  return model.SerializeToString()


def byte_pair_vocabulary(size=None, special_tokens=("<|endoftext|>",)):
  """`(vocabulary, merges)` of a byte-level BPE trained on `texts()`, the
  special tokens last (as Qwen's and Llama 3's); with `size`, filler tokens
  (`x<i>`, which no merge makes) make up `size` tokens."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.train_from_iterator(texts(), tokenizers.trainers.BpeTrainer(
      vocab_size=400, show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  model = json.loads(bpe.to_str())["model"]
  vocabulary = dict(model["vocab"])
  for i in range(len(vocabulary), (size or 0) - len(special_tokens)):
    vocabulary[f"x{i}"] = i
  for token in special_tokens:
    vocabulary[token] = len(vocabulary)
  merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
  return vocabulary, merges


def causal_lm(family, *, seed=0, vocabulary_size=None, **backbone_kwargs):
  """A KerasHub CausalLM of `family` (`FAMILIES`) with random weights (seeded),
  its tokenizer and preprocessor; `backbone_kwargs` override the tiny sizes,
  `vocabulary_size` the tokenizer's (and so the backbone's; at least the
  trained tokens')."""
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
        proto=sentencepiece_proto(vocabulary_size, gemma=family == "gemma3"))
  elif family == "llama3":
    vocabulary, merges = byte_pair_vocabulary(vocabulary_size, special_tokens=(
        "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
        "<|end_header_id|>", "<|eot_id|>"))
    tokenizer = models.Llama3Tokenizer(vocabulary=vocabulary, merges=merges)
  else:
    vocabulary, merges = byte_pair_vocabulary(vocabulary_size)
    tokenizer = models.QwenTokenizer(vocabulary=vocabulary, merges=merges)
  keras.utils.set_random_seed(seed)
  sizes = {**_SIZES, **backbone_kwargs}
  if family == "gemma3":  # text only: no vision encoder, but an image size
    sizes = {"head_dim": sizes["hidden_dim"] // sizes["num_query_heads"],
             "image_size": 16, **sizes}
  backbone = getattr(models, backbone_class)(
      vocabulary_size=tokenizer.vocabulary_size(), **sizes)
  _randomize(backbone, np.random.default_rng(seed))
  preprocessor = getattr(models, task + "Preprocessor")(tokenizer)
  return getattr(models, task)(backbone=backbone, preprocessor=preprocessor)


def _randomize(backbone, rng):
  """Every weight drawn so that a misplaced one shows: embeddings N(0, 1 /
  D), kernels N(0, 1 / fan-in), norm scales 1 + N(0, 0.1), biases N(0,
  0.1) (KerasHub's initial ones and zeros would hide a swapped scale or
  bias, and its small embeddings make near-ties of the logits); the logits
  come out of order 1.

  A kernel's fan-in is what each output sums over: `D` for the query, key
  and value kernels (`[D, N, H]`, or Gemma's `[N, D, H]`), `N * H` for the
  attention output's `[N, H, D]`, the first axis of a matrix. (Taking the
  first axis of every kernel made Gemma's attention 2.8 x 2.8 x 4 times too
  strong: its softmax was near one-hot and rounding decided which key won,
  so two float32 runs of the same math differed up to 16x in their error.)"""
  for weight in backbone.weights:
    shape, name = tuple(weight.shape), weight.path
    if "scale" in name:
      value = 1 + 0.1 * rng.standard_normal(shape)
    elif "bias" in name:
      value = 0.1 * rng.standard_normal(shape)
    elif "embeddings" in name:  # [V, D], or [D, V] reversed
      value = rng.standard_normal(shape) / np.sqrt(min(shape))
    else:
      value = rng.standard_normal(shape) / np.sqrt(_fan_in(weight, backbone.hidden_dim))
    weight.assign(value.astype("float32"))


def _fan_in(kernel, hidden_dim):
  shape = tuple(kernel.shape)
  if len(shape) == 2:
    return shape[0]
  if "attention_output" in kernel.path:
    return int(np.prod(shape[:-1]))
  return hidden_dim


def save(family, directory, *, seed=0, vocabulary_size=None, **backbone_kwargs):
  """Saves `causal_lm(...)` as a preset directory; returns `directory`."""
  causal_lm(family, seed=seed, vocabulary_size=vocabulary_size,
            **backbone_kwargs).save_to_preset(directory)
  return directory
