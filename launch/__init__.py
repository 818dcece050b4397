"""Running oneshot on Cloud TPU: `oneshot launch` (launch.tpu) and multi-host start-up (launch.distributed).

Kept import-light like `oneshot`: importing `launch` must not import jax, because
`launch.distributed.maybe_initialize` has to run before anything touches a jax backend.
"""

from __future__ import annotations

from oneshot.launch.distributed import is_primary, maybe_initialize

__all__ = ["is_primary", "maybe_initialize"]
