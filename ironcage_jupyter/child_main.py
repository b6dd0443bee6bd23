"""Entry point of the child kernel (inside the sandbox): ipykernel with a deeper iopub queue.

A cell that displays output in a tight loop publishes faster than the wrapper can relay in bursts;
with zmq's default high-water mark of 1,000 messages the child's iopub socket would silently drop
output. Everything else is stock ipykernel.
"""

from __future__ import annotations

import sys
from typing import Any

import zmq

IOPUB_QUEUE = 200_000


def main() -> None:
    original_init = zmq.Context.__init__

    def init(self: zmq.Context, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.setsockopt(zmq.SNDHWM, IOPUB_QUEUE)

    zmq.Context.__init__ = init  # type: ignore[method-assign]
    from ipykernel.kernelapp import launch_new_instance

    sys.argv[0] = "ipykernel_launcher"
    launch_new_instance()


if __name__ == "__main__":
    main()
