"""Runs sans-I/O procedures (`ops.Proc`) on a sync redis client: what `Batcher` is made of."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis

from .clients import is_cluster
from .errors import with_pool_hint
from .ops import Atomic, Cmd, Eval, Op, Proc, Store, multi_refused
from .scripts import Scripts
from .transport import Transport, once_more, patient

T = TypeVar("T")


class SyncDriver:
    def __init__(self, client: Any, scripts: Scripts | None = None, transport: Transport | None = None,
                 handoff: Callable[[Sequence[str], int], None] | None = None) -> None:
        self.client = client
        self.cluster = is_cluster(client)
        self._no_multi = False
        self.scripts = scripts or Scripts(client)
        self.transport = transport or Transport(client)
        self.handoff = handoff

    def run(self, proc: Proc[T]) -> T:
        """Run a procedure to its end; a failed operation is raised inside it, where it was asked."""
        do, send, throw = self._do, proc.send, proc.throw
        try:
            op = next(proc)
            while True:
                try:
                    reply = do(op)
                except Exception as exc:
                    op = throw(with_pool_hint(exc))
                else:
                    op = send(reply)
        except StopIteration as stop:
            result: T = stop.value
            return result

    def _do(self, op: Op) -> Any:
        if isinstance(op, Store):
            em = self.transport.emitter()
            return self.transport.run(getattr(self.scripts, op.script), op.build(em.id, em.calls), em.client)
        if isinstance(op, Eval):
            return once_more(getattr(self.scripts, op.script), list(op.keys), list(op.args))
        if isinstance(op, Cmd):  # on a cluster a multi-key one (EXISTS a b) can meet a slot on the move
            return patient(lambda: getattr(self.client, op.name)(*op.args), self.client)
        if isinstance(op, Atomic):
            return self._atomic(op.cmds)
        if self.handoff is not None:
            self.handoff(op.batch_ids, op.queued)
        return None

    def _atomic(self, cmds: tuple[Cmd, ...]) -> list[Any]:
        if self.cluster or self._no_multi:
            return [getattr(self.client, c.name)(*c.args) for c in cmds]
        pipe = self.client.pipeline(transaction=True)
        for c in cmds:
            getattr(pipe, c.name)(*c.args)
        try:
            return list(pipe.execute())
        except redis.RedisError as exc:
            why = multi_refused(exc)
            if why is None:
                raise
            # in order, one by one, as on a cluster (what reads as one is ordered for that),
            # instead of refused; a look-only user for good, a Redis past maxmemory this time
            self._no_multi = why == "acl"
            return [getattr(self.client, c.name)(*c.args) for c in cmds]
