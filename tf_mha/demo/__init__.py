"""The demos: a text classifier and a text generator, with their generated
data, offline vocabularies, models, training tasks and exports.

May import export, training, generation, layers and ops; not cli.
"""
