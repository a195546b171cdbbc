"""The command-line programs (absl), installed as `tf_mha_*` console scripts
and reachable as `python -m tools.<name>` from a checkout."""
