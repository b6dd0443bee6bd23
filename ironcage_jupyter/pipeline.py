"""The per-cell pipeline: explicit, ordered stages inside the wrapper.

    screen -> decide -> prepare credentials -> execute -> filter outputs -> record

Each stage is an object with a ``name`` and an async ``run(cell)``. A stage that refuses the cell sets
``cell.block``; the stages after it do not run, except ``record`` stages, which always run so that a
refusal is audited too. A stage that raises blocks the cell (fail closed) with the error as reason.
Output filtering happens while the cell executes: the execute stage installs it on the relay.

Stages marked ``after_reply`` (the closing audit record) are left out of ``run`` and run by
``finish`` once the reply and idle have been sent: the frontend does not wait for bookkeeping that
cannot change the cell's outcome. They must come last. A failure there fails the next cell instead
(the audit stages mark the log unusable).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Block:
    """Why a cell does not run (or did not finish)."""

    ename: str
    evalue: str
    rule: str | None = None
    reason: str | None = None
    #: Lines shown to the user in the error traceback, after the headline.
    details: list[str] = field(default_factory=list)


@dataclass
class CellRequest:
    """One execute_request as it travels through the pipeline."""

    code: str
    silent: bool
    store_history: bool
    user_expressions: dict[str, Any]
    allow_stdin: bool
    cell_id: str | None
    metadata: dict[str, Any]
    execution_count: int
    started: float = field(default_factory=time.monotonic)
    #: Filled in by the stages.
    screen: Any = None
    decision: Any = None
    secrets: list[str] = field(default_factory=list)
    block: Block | None = None
    reply: dict[str, Any] | None = None
    redactions: int = 0
    output_bytes: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """Who claims to have written the cell (agents set this in the request metadata)."""
        meta = self.metadata or {}
        for key in ("ironcage_origin", "origin", "agent"):
            value = meta.get(key)
            if isinstance(value, str) and value:
                return value[:200]
        return "user"

    @property
    def code_sha256(self) -> str:
        return hashlib.sha256(self.code.encode("utf-8", "surrogatepass")).hexdigest()


class Stage(Protocol):
    name: str
    #: Record stages run even after an earlier stage blocked the cell.
    always: bool

    async def run(self, cell: CellRequest) -> None: ...


class Pipeline:
    """Runs the stages in order and turns any exception into a block (fail closed)."""

    def __init__(self, stages: list[Stage]) -> None:
        later = [getattr(stage, "after_reply", False) for stage in stages]
        if later != sorted(later):
            raise ValueError("stages that run after the reply must come last")
        self.stages = [stage for stage, after in zip(stages, later, strict=True) if not after]
        self.after_reply = [stage for stage, after in zip(stages, later, strict=True) if after]

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in (*self.stages, *self.after_reply)]

    async def run(self, cell: CellRequest) -> CellRequest:
        """Every stage up to the reply."""
        return await self._run(self.stages, cell)

    async def finish(self, cell: CellRequest) -> CellRequest:
        """The ``after_reply`` stages (call once the reply is sent)."""
        return await self._run(self.after_reply, cell)

    async def _run(self, stages: list[Stage], cell: CellRequest) -> CellRequest:
        for stage in stages:
            if cell.block is not None and not stage.always:
                continue
            try:
                await stage.run(cell)
            except Exception as exc:  # a failing check never lets the cell through
                if cell.block is None:
                    cell.block = Block(
                        ename="IronCageError",
                        evalue=f"the {stage.name} stage failed, so the cell was not run: {exc!r}",
                        rule="invariant.fail-closed",
                        reason=f"{stage.name} raised {type(exc).__name__}",
                    )
                elif stage.always:
                    raise
        return cell
