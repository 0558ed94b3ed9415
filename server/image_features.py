"""The vision stage of a batch: image tokens once per (image, vision-side adapter state),
from a byte-bounded LRU cache when it holds them.

    stage = VisionStage(backbone, registry, ImageFeatureCache(256 * 2**20, metrics))
    embeds = stage.embeds(pixel_rows, keys, adapters)   # model worker thread only

What is shared. An adapter whose kind says it leaves the vision tower frozen
(`AdapterKind.touches_vision(meta)` False) sees the frozen backbone's image tokens: every
such adapter in a batch, and the frozen backbone itself, shares ONE vision forward per
image. An adapter that changes the ViT (e.g. VCRA/LoRA/VL-PET with "vision" among its
targets) gets its own vision rows, run in the same batched ViT call under a routing of
just those rows. Everything after the vision encoder runs under the batch's full routing
(`adapters.backbone.from_image_tokens`).

The cache key is (content hash of the preprocessed pixels, vision state), the vision
state being None for the frozen tower, else (adapter name, load serial). The registry
bumps an adapter's serial on every load, reload and unload and tells the cache to drop
that adapter's entries, so a replaced or reloaded adapter is never served stale tokens:
even an entry missed by the drop could not match the new serial.

Videos (pixel rows (F, 3, H, W), one batch key per frame count) share the ViT pass the
same way (a fan-out's adapters leaving the tower frozen run the frames once) but are never
cached: one clip's tokens weigh F images' and would push the images out.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

from adapters import routed, tasks
from adapters.kinds import KINDS


def pixel_keys(pixels: torch.Tensor) -> list[str]:
    """One content hash per image row of (n, 3, H, W): what the ViT's output depends on.
    The server hashes the processor's float32 output (before any dtype cast), request side."""
    raw = pixels.detach().to("cpu").contiguous().reshape(pixels.shape[0], -1).view(torch.uint8)  # any dtype's bytes
    arr = raw.numpy()
    return [hashlib.blake2b(arr[i], digest_size=16).hexdigest() for i in range(arr.shape[0])]


class ImageFeatureCache:
    """LRU of image-token tensors (T, Hv) bounded by `max_bytes` (0 = off). Not thread-safe:
    the model worker thread owns it."""

    def __init__(self, max_bytes: int, metrics=None):
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.nbytes = 0
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> torch.Tensor | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        if self.metrics is not None:
            (self.metrics.image_cache_hits if value is not None else self.metrics.image_cache_misses).inc()
        return value

    def put(self, key: tuple, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes or key in self._entries:
            return
        value = value.clone()  # own storage: a view would keep the whole batch alive
        while self.nbytes + size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()
        self._entries[key] = value
        self.nbytes += size
        self._gauge()

    def drop(self, adapter: str) -> None:
        """Forget every entry computed through `adapter` (its vision state is (adapter, serial))."""
        for key in [k for k in self._entries if k[1] is not None and k[1][0] == adapter]:
            old = self._entries.pop(key)
            self.nbytes -= old.numel() * old.element_size()
        self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.image_cache_bytes.set(self.nbytes)
            self.metrics.image_cache_entries.set(len(self._entries))


class VisionStage:
    def __init__(self, backbone, registry, cache: ImageFeatureCache):
        self.bb = backbone
        self.registry = registry
        self.cache = cache
        registry.on_change.append(cache.drop)

    def vision_state(self, adapter: str | None):
        """None when `adapter` leaves the ViT frozen, else (name, load serial). Loaded adapters only."""
        if adapter is None:
            return None
        meta = self.registry.table.meta(adapter)
        if not KINDS[meta.kind].touches_vision(meta):
            return None
        return adapter, self.registry.serial(adapter)

    def embeds(self, pixels: list[torch.Tensor], keys: list[list[str] | None], adapters: list[str | None]
               ) -> list[torch.Tensor]:
        """Per item: pixels (p, 3, H, W) or videos (p, F, 3, H, W), their content keys (None: hash
        here) and its adapter -> that item's image tokens (p, T, Hv), a video's T its F frames'. One ViT
        call for every distinct (image, vision state) the cache lacks (videos: never cached), rows of
        vision-touching adapters routed to them."""
        wanted: dict[tuple, tuple[torch.Tensor, str | None]] = {}  # key -> (pixel row, adapter for the ViT)
        item_keys = []
        for px, ks, name in zip(pixels, keys, adapters, strict=True):
            ks = ks if ks is not None else pixel_keys(px)
            state = self.vision_state(name)
            row_keys = [(k, state) for k in ks]
            for i, key in enumerate(row_keys):
                wanted.setdefault(key, (px[i : i + 1], name if state is not None else None))
            item_keys.append(row_keys)
        found = {}
        cached = dict.fromkeys(k for k, (px, _) in wanted.items() if self.cache.max_bytes and px.dim() == 4)  # images
        for key in cached:
            hit = self.cache.get(key)
            if hit is not None:
                found[key] = hit
        missing = [k for k in wanted if k not in found]
        if missing:
            px = torch.cat([wanted[k][0] for k in missing]).to(self.bb.device, self.bb.dtype)
            routing = self.registry.routing([wanted[k][1] for k in missing])
            with routed(routing):  # None: the frozen tower
                out = tasks.encode_image(self.bb, px)  # (m, T, Hv)
            for i, key in enumerate(missing):
                found[key] = out[i]
                if key in cached:
                    self.cache.put(key, out[i])
        return [torch.stack([found[k] for k in row_keys]) for row_keys in item_keys]
