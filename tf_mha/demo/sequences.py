"""Generated prompts for the generator demo: reverse a list of words.

A prompt is 1 to `MAX_WORDS` words drawn from `WORDS` ("red fox sun"); its
answer is the same words in reverse order ("sun fox red"). Each answer
token must be copied from a position that depends on the prompt's length
and on how much has been written, so the model has to attend; and every
answer can be checked exactly.

Everything is generated from a seed, so nothing is downloaded.
"""

import numpy as np

WORDS = ("red", "blue", "green", "gold", "grey", "pink", "fox", "cat", "dog",
         "owl", "bee", "elk", "sun", "moon", "star", "rain", "snow", "wind",
         "one", "two", "six", "ten", "up", "down")
MAX_WORDS = 8
# Reserved ids: 0 pads, then the tokenizer's unknown word, the start of a
# prompt, the end of a prompt (where the answer starts) and the end of an
# answer.
PAD, UNK, BEGIN, SEPARATOR, END = "[PAD]", "[UNK]", "[BOS]", "[SEP]", "[END]"
RESERVED = (PAD, UNK, BEGIN, SEPARATOR, END)


def vocabulary():
  """The word-level vocabulary: `RESERVED`, then `WORDS`."""
  return list(RESERVED) + list(WORDS)


def answer(prompt):
  """The correct answer to a prompt string."""
  return " ".join(reversed(prompt.split()))


def make_prompts(count, seed=0, exclude=()):
  """`count` prompt strings of 1 to `MAX_WORDS` words (uniform lengths).

  Prompts of 3 words or more are distinct and not in `exclude` (held-out
  prompts are new); the 24 one-word and 576 two-word prompts cannot all be
  new, so those repeat.
  """
  rng = np.random.default_rng(seed)
  excluded, prompts = set(exclude), []
  while len(prompts) < count:
    length = int(rng.integers(1, MAX_WORDS + 1))
    prompt = " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=length))
    if length > 2 and prompt in excluded:
      continue
    excluded.add(prompt)
    prompts.append(prompt)
  return prompts


def sentencepiece_model():
  """The vocabulary as a serialized SentencePiece model (word-level, ids as in
  `vocabulary()`), for runtimes that read SentencePiece (LiteRT-LM): it gives
  a prompt of the vocabulary's words, in any case, the ids the SavedModel's
  tokenizer gives it. Built here, not trained; only its normalizer (NFKC with
  case folding, as the SavedModel's lower-casing) comes from a throwaway
  model that SentencePiece's trainer makes. Words are pieces `"\u2581word"`;
  the separator is `"\u2581[sep]"` (case-folded), so the template's " [SEP]"
  after a prompt is one token."""
  import io  # pylint: disable=g-import-not-at-top
  import sentencepiece  # pylint: disable=g-import-not-at-top
  from sentencepiece import sentencepiece_model_pb2 as pb  # pylint: disable=g-import-not-at-top
  trained = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter([" ".join(WORDS)] * 4), model_writer=trained,
      model_type="word", vocab_size=len(WORDS), hard_vocab_limit=False,
      normalization_rule_name="nmt_nfkc_cf", minloglevel=2)
  model = pb.ModelProto()
  model.normalizer_spec.CopyFrom(
      pb.ModelProto.FromString(trained.getvalue()).normalizer_spec)
  spec = model.trainer_spec
  spec.model_type = pb.TrainerSpec.WORD
  spec.pad_id, spec.unk_id, spec.bos_id, spec.eos_id = (
      RESERVED.index(t) for t in (PAD, UNK, BEGIN, END))
  kind = pb.ModelProto.SentencePiece
  kinds = {PAD: kind.CONTROL, UNK: kind.UNKNOWN, BEGIN: kind.CONTROL,
           SEPARATOR: kind.NORMAL, END: kind.CONTROL}
  for token in RESERVED:
    piece = "\u2581" + token.lower() if token == SEPARATOR else token
    model.pieces.add(piece=piece, score=0.0, type=kinds[token])
  for word in WORDS:
    model.pieces.add(piece="\u2581" + word, score=0.0, type=kind.NORMAL)
  spec.vocab_size = len(model.pieces)
  return model.SerializeToString()
