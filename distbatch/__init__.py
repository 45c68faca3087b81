"""distbatch: batch events across processes and machines, with Redis holding all state."""

from .batcher import Batcher
from .clock import ManualClock
from .errors import ConfigError, DistbatchError, EmitError, HandlerTimeout, PayloadError
from .models import Batch, EmitResult, Event

__all__ = [
    "Batch", "Batcher", "ConfigError", "DistbatchError", "EmitError", "EmitResult", "Event",
    "HandlerTimeout", "ManualClock", "PayloadError",
]
