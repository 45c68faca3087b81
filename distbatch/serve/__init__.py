"""`distbatch serve`: HTTP ingest for services in any language (needs `distbatch[serve]`)."""

from .app import create_app
from .settings import ServeSettings, read_tokens

__all__ = ["ServeSettings", "create_app", "read_tokens"]
