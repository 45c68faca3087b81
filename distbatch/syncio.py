"""Runs sans-I/O procedures (`ops.Proc`) on a sync redis client: what `Batcher` is made of."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .clients import is_cluster
from .ops import Atomic, Cmd, Eval, Proc, Store
from .scripts import Scripts
from .transport import Transport, once_more

T = TypeVar("T")


class SyncDriver:
    def __init__(self, client: Any, scripts: Scripts | None = None, transport: Transport | None = None,
                 handoff: Callable[[Sequence[str]], None] | None = None) -> None:
        self.client = client
        self.cluster = is_cluster(client)
        self.scripts = scripts or Scripts(client)
        self.transport = transport or Transport(client)
        self.handoff = handoff

    def run(self, proc: Proc[T]) -> T:
        send = proc.send
        reply: Any = None
        try:
            while True:
                op = send(reply)
                if isinstance(op, Store):
                    client, emitter, calls = self.transport.emitter()
                    reply = self.transport.run(self.scripts.accumulate, op.build(emitter, calls), client)
                elif isinstance(op, Eval):
                    reply = once_more(getattr(self.scripts, op.script), list(op.keys), list(op.args))
                elif isinstance(op, Cmd):
                    reply = getattr(self.client, op.name)(*op.args)
                elif isinstance(op, Atomic):
                    reply = self._atomic(op.cmds)
                else:
                    if self.handoff is not None:
                        self.handoff(op.batch_ids)
                    reply = None
        except StopIteration as stop:
            result: T = stop.value
            return result

    def _atomic(self, cmds: tuple[Cmd, ...]) -> list[Any]:
        if self.cluster:
            return [getattr(self.client, c.name)(*c.args) for c in cmds]
        pipe = self.client.pipeline(transaction=True)
        for c in cmds:
            getattr(pipe, c.name)(*c.args)
        return list(pipe.execute())
