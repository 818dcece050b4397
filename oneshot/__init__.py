"""oneshot: weight-sharing one-shot NAS with hardware co-search, in JAX.

Kept import-light on purpose: `import oneshot` must not pull in jax, so the CLI can report bad input fast.
"""

from oneshot.errors import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
