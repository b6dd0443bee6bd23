"""The per-cell pipeline: explicit, ordered stages inside the wrapper.

    screen -> decide -> prepare credentials -> execute -> filter outputs -> record

Each stage is an object with a ``name`` and an async ``run(cell)``. A stage that refuses the cell sets
``cell.block``; the stages after it do not run, except ``record`` stages, which always run so that a
refusal is audited too. A stage that raises blocks the cell (fail closed) with the error as reason.
Output filtering happens while the cell executes: the execute stage installs it on the relay.
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
        self.stages = stages

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    async def run(self, cell: CellRequest) -> CellRequest:
        for stage in self.stages:
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
