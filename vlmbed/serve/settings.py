"""Server settings: batching, limits and safety switches, with the defaults ``vlmbed serve`` uses."""

from __future__ import annotations

import os
from dataclasses import dataclass

API_KEY_ENV = "VLMBED_API_KEY"


@dataclass
class ServeSettings:
    """Everything :func:`~vlmbed.serve.app.create_app` needs besides the model.

    ``api_key``: when set, ``/v1/*`` routes need ``Authorization: Bearer <api_key>`` (``vlmbed serve`` reads
    it from ``--api-key`` or the ``VLMBED_API_KEY`` environment variable). ``max_queue`` counts items
    waiting for the model; beyond it requests get 503 with ``Retry-After``.
    """

    model_name: str = "vlmbed"
    api_key: str | None = None
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_body_bytes: int = 32 * 1024 * 1024
    max_items_per_request: int = 256
    max_image_pixels: int = 25_000_000
    allow_remote_images: bool = False
    remote_timeout_s: float = 10.0
    count_tokens: bool = True  # fill `usage` with exact prompt token counts

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_body_bytes", "max_items_per_request", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve setting {name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"serve setting max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.api_key == "":
            self.api_key = None

    @classmethod
    def api_key_from_env(cls) -> str | None:
        return os.environ.get(API_KEY_ENV) or None
