"""What `tools/benchmark.py` measures: attention against its peers
(`attention`), cached decode steps (`decode`) and generation (`generation`).

May import everything below the commands (demo, export, layers, ops).
"""
