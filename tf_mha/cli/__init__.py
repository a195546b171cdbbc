"""The command-line programs (absl), installed as `tf_mha_*` console scripts
and reachable as `python -m tools.<name>` from a checkout.

May import every folder of tf_mha; nothing imports it. Each command is thin:
flags in, one library call, a report out.
"""
