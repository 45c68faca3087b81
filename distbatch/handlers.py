"""Which handlers a worker may run: registered in its process, or under an allowlisted module.

A binding's handler path comes from Redis; importing whatever path Redis names would let anyone
who can write to Redis run code on the workers. So a worker resolves a path only if the function
was registered in its own process (`@handler`, or passed as a callable to `Batcher.register`) or
if the path lies under one of the module prefixes it was started with (`--handlers`).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any

from .errors import HandlerNotAllowed, describe

Handler = Callable[[Any], Any]
log = logging.getLogger("distbatch")
_registered: dict[str, Handler] = {}


def handler_path(fn: Handler) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def handler(fn: Handler) -> Handler:
    """Decorator: allow this function to be run by workers of this process."""
    _registered[handler_path(fn)] = fn
    return fn


def registered() -> list[str]:
    """Import paths of the handlers registered in this process."""
    return sorted(_registered)


def check_path(path: str) -> None:
    """A handler path given to `register` that no worker could resolve, said there: a typo in the
    function's name passed, and its batches were given back every 5 s and never ran nor went dead.
    The module is imported as a worker would; one this process cannot import (the handlers live
    with the workers only, a dependency missing here) is left to the workers to judge."""
    from .errors import ConfigError

    module_name, _, attr = path.rpartition(".")
    if not module_name or attr.startswith("_"):
        raise ConfigError("handler_invalid", f"handler={path!r} names no public function of a module "
                          "(workers run `module.function`)")
    if path in _registered:
        return
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit):  # not importable here: the workers say why, if they cannot either
        return
    if getattr(getattr(module, "__spec__", None), "_initializing", False):
        return  # being imported (it imports the app that registers its handlers): not all there yet
    fn = getattr(module, attr, None)
    if fn is None:
        near = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None))]
        raise ConfigError("handler_unknown", f"handler={path!r}: module {module_name!r} (here "
                          f"{getattr(module, '__file__', None)}) has no {attr!r} (a typo?); its functions: "
                          f"{sorted(near)[:20]}")
    if not callable(fn) or inspect.isclass(fn):
        raise ConfigError("handler_invalid", f"handler={path!r} is a {type(fn).__name__}, not a function")
    home = getattr(fn, "__module__", None)
    if isinstance(home, str) and home != module_name:
        # a worker runs what an allowlisted module merely imported only if its --handlers allow
        # where it is defined too (`HandlerResolver.resolve`); else its batches go back every 5 s
        # for ever. Which prefixes the workers allow is not known here: said, not refused
        name = getattr(fn, "__qualname__", attr)
        log.warning("handler_imported handler=%s: it is %s.%s, which %r only imports; a worker runs "
                    "it only if its --handlers allow %r too (else its batches wait, "
                    "`handler_unavailable`)", path, home, name, module_name, home,
                    extra={"event": "handler_imported"})


class HandlerResolver:
    def __init__(self, allow_prefixes: Iterable[str] = ()) -> None:
        self.allow_prefixes = tuple(p.strip().rstrip(".") for p in allow_prefixes if p.strip())
        self._cache: dict[str, Handler] = {}

    def unfound(self) -> dict[str, str]:
        """The allowed prefixes that name no module that imports here, nor a name in one, each
        with why (a typo, a folder missing from sys.path, a module that fails as it is imported:
        a syntax error, a missing dependency): every batch of theirs would go back untouched,
        every 5 s. Imported at a worker's start, so it says so then, not at the first batch."""
        out: dict[str, str] = {}
        for p in self.allow_prefixes:
            try:
                importlib.import_module(p)
                continue
            except ModuleNotFoundError as exc:
                if exc.name != p:  # p is there, but something it imports is not
                    out[p] = f"it cannot be imported: {describe(exc)}"
                    continue
            except Exception as exc:
                out[p] = f"it cannot be imported: {describe(exc)}"
                continue
            parent, _, name = p.rpartition(".")
            try:  # a function's own path, allowed on its own
                if parent and hasattr(importlib.import_module(parent), name):
                    continue
                out[p] = "no module of that name imports here, nor a name in one (a typo, or its " \
                         "folder not on sys.path: --path)"
            except Exception as exc:
                out[p] = f"no module of that name imports here ({describe(exc)}; a typo, or its " \
                         "folder not on sys.path: --path)"
        return out

    def allowed(self, path: str) -> bool:
        return path in _registered or any(
            path == p or path.startswith(p + ".") for p in self.allow_prefixes
        )

    def resolve(self, path: str) -> Handler:
        if path in _registered:
            return _registered[path]
        if path in self._cache:
            return self._cache[path]
        if not self.allowed(path):
            raise HandlerNotAllowed(
                f"handler={path!r} is neither registered in this worker nor under its allowlist "
                f"{list(self.allow_prefixes)}; start the worker with --handlers <module prefix>"
            )
        module_name, _, attr = path.rpartition(".")
        if not module_name or attr.startswith("_"):
            raise HandlerNotAllowed(f"handler={path!r} names no public function of a module")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:  # a missing module, or one that fails as it is imported
            raise HandlerNotAllowed(f"handler={path!r} cannot be imported: {describe(exc)}") from exc
        if not callable(fn) or inspect.isclass(fn):
            raise HandlerNotAllowed(f"handler={path!r} is not a function")
        # What an allowlisted module merely imported (a class, another module's function) is no
        # handler of it: a path written to Redis must not reach it through the module.
        home = f"{getattr(fn, '__module__', None)}.{attr}"
        if home != path and not self.allowed(home):
            raise HandlerNotAllowed(f"handler={path!r} is defined in {getattr(fn, '__module__', None)!r}, "
                                    f"outside the allowlist {list(self.allow_prefixes)}")
        self._cache[path] = fn
        return fn  # type: ignore[no-any-return]
