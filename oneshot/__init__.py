"""oneshot: weight-sharing one-shot NAS with hardware co-search, in JAX.

From Python: `from oneshot import api` (`api.search`, `api.export`, `api.load`, `api.get_config`). The
calls live in their own module rather than on the package because `oneshot.search` and
`oneshot.export` are the subcommands' modules. Kept import-light on purpose: `import oneshot` must not
pull in jax, so the CLI can report bad input fast.
"""

from oneshot.errors import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
