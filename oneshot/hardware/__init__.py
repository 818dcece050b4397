"""Hardware co-search: layer tables of child networks, an analytical accelerator model, and rewards.

Numpy only (no jax), so cost queries stay cheap and importable from the CLI's fast path.
"""
