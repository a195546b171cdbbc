"""Generated review sentences whose label needs word order and negation.

A sentence has one or two clauses, "<subject> was [not] <adjective>", joined
by "but". The label is the sentiment of the *last* clause, flipped by "not":
"the plot was good but the acting was not great" is negative. A bag of words
cannot tell "good but not great" from "not good but great"; attention can.

Everything is generated from a seed, so nothing is downloaded.
"""

import numpy as np

LABELS = ("negative", "positive")
_SUBJECTS = ("the movie", "the plot", "the acting", "the music", "the ending",
             "the film", "the cast", "the story", "the script", "the camera")
_POSITIVE = ("good", "great", "excellent", "wonderful", "fun", "brilliant",
             "moving", "clever")
_NEGATIVE = ("bad", "boring", "awful", "dull", "terrible", "weak", "silly",
             "slow")


def _clause(rng):
  positive = rng.random() < 0.5
  negated = rng.random() < 0.5
  words = _POSITIVE if positive else _NEGATIVE
  text = (f"{_SUBJECTS[rng.integers(len(_SUBJECTS))]} was "
          f"{'not ' if negated else ''}{words[rng.integers(len(words))]}")
  return text, positive != negated


def make_examples(count, seed=0):
  """`count` (sentences, labels): a list of str and an int array (1 = positive)."""
  rng = np.random.default_rng(seed)
  texts, labels = [], []
  for _ in range(count):
    text, label = _clause(rng)
    if rng.random() < 0.6:
      second, label = _clause(rng)
      text = f"{text} but {second}"
    texts.append(text)
    labels.append(int(label))
  return texts, np.array(labels, np.int32)


def vocabulary(texts, reserved=("[PAD]", "[UNK]")):
  """The word-level vocabulary of a corpus, built offline: reserved tokens,
  then words by descending frequency (ties alphabetical)."""
  counts = {}
  for text in texts:
    for word in text.split():
      counts[word] = counts.get(word, 0) + 1
  words = sorted(counts, key=lambda w: (-counts[w], w))
  return list(reserved) + words
