"""Datasets for the three BLIP/LAVIS annotation formats, and their collate functions.

    caption    [{"image": path, "caption": str, "image_id": ...}]
    vqa        [{"question_id": ..., "image": path, "question": str, "answer": [str, ...]}]
    retrieval  [{"image": path, "caption": [str, ...], ...}]        (extra keys are ignored)

Video sets in LAVIS's formats are the same with a "video" key instead of "image" (detected
per file, `media_key`): MSRVTT-QA [{"question_id", "video", "question", "answer": str}],
DiDeMo / MSRVTT retrieval [{"video", "caption": str | [str, ...], ...}]. Each video becomes
`num_frames` uniformly sampled frames (pixels (B, F, 3, H, W)), decoded once and cached.

Image (and video) paths are relative to an image root. Items are plain tuples; a collate turns
a list of them into tensors with the backbone's processor (images through its image
processor, texts through its tokenizer), so real BLIP data and the shapes world go
through the same code. Images are decoded once and their pixels cached per dataset.

    ds = CaptionDataset.from_json("world/caption_train.json", "world")
    batch = ds.collate([ds[0], ds[1]], processor)   # pixel_values, input_ids, attention_mask, ...
"""

from __future__ import annotations

import json
import os
from collections import Counter, OrderedDict
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from adapters.backbone.frames import VideoError, VideoLimits, decode_video
from adapters.backbone.tasks import CAPTION_PROMPT

MAX_TEXT_LEN = 40  # tokens; the world's longest text is ~15, BLIP uses 30-35 for COCO
DEFAULT_FRAMES = 8  # video frames sampled per clip (BLIP's video transfer and the server's default)


def load_json(path: str | os.PathLike) -> list[dict]:
    entries = json.loads(Path(path).read_text())
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty JSON list of annotation entries")
    return entries


class ImageStore:
    """Decodes each image once; `pixels(paths)` -> (B, 3, H, W) float32 from the processor."""

    def __init__(self, root: str | os.PathLike, image_processor):
        self.root = Path(root)
        self.image_processor = image_processor
        self._cache: dict[str, torch.Tensor] = {}

    def pixels(self, paths: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(paths) if p not in self._cache]
        if missing:
            images = [Image.open(self.root / p).convert("RGB") for p in missing]
            values = self.image_processor(images, return_tensors="pt")["pixel_values"]
            self._cache.update(zip(missing, values))
        return torch.stack([self._cache[p] for p in paths])


class VideoStore:
    """Decodes each video once (`adapters.backbone.frames`: the server's uniform sampling) and
    keeps the pixels of the `max_cached` most recently used clips (a clip is F images: a real
    set's every clip would not fit in memory); `pixels(paths)` -> (B, F, 3, H, W) float32."""

    # training reads the user's own files: only bytes that do not decode are refused
    LIMITS = VideoLimits(max_bytes=2**40, max_pixels=2**26, max_seconds=24 * 3600.0, max_frames=10**8)

    def __init__(self, root: str | os.PathLike, image_processor, num_frames: int, max_cached: int = 4096):
        self.root = Path(root)
        self.image_processor = image_processor
        self.num_frames = num_frames
        self.max_cached = max_cached
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def _load(self, p: str) -> torch.Tensor:
        try:
            frames = decode_video((self.root / p).read_bytes(), self.num_frames, self.LIMITS, field=p)
        except VideoError as exc:
            raise ValueError(f"{self.root / p}: {exc}") from None
        return self.image_processor(frames, return_tensors="pt")["pixel_values"]  # (F, 3, H, W)

    def pixels(self, paths: list[str]) -> torch.Tensor:
        batch = {}
        for p in dict.fromkeys(paths):
            if p in self._cache:
                self._cache.move_to_end(p)
            else:
                self._cache[p] = self._load(p)
                while len(self._cache) > self.max_cached:
                    self._cache.popitem(last=False)
            batch[p] = self._cache[p]
        return torch.stack([batch[p] for p in paths])


def media_key(entries: list[dict]) -> str:
    """"video" when the annotations name videos (MSRVTT-QA, DiDeMo, MSRVTT retrieval), else "image"."""
    kinds = {"video" if "video" in e else "image" for e in entries}
    if len(kinds) > 1:
        raise ValueError("annotation entries mix 'image' and 'video' items; use one kind per file")
    return kinds.pop()


def _tokens(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=MAX_TEXT_LEN, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


class _Base(Dataset):
    """`media` is "image" or "video" (entries' key, `media_key`); video items become
    `num_frames` uniformly sampled frames, pixels (B, F, 3, H, W) that every task function
    takes like images (adapters/backbone/tasks.py: BLIP's video transfer)."""

    def __init__(self, entries: list[dict], image_root: str | os.PathLike, num_frames: int = DEFAULT_FRAMES):
        self.entries = entries
        self.image_root = Path(image_root)
        self.media = media_key(entries)
        self.num_frames = num_frames
        self.store: ImageStore | VideoStore | None = None

    @classmethod
    def from_json(cls, path: str | os.PathLike, image_root: str | os.PathLike, num_frames: int = DEFAULT_FRAMES):
        return cls(load_json(path), image_root, num_frames)

    def _pixels(self, paths: list[str], processor) -> torch.Tensor:
        if self.store is None or self.store.image_processor is not processor.image_processor:
            self.store = (VideoStore(self.image_root, processor.image_processor, self.num_frames)
                          if self.media == "video" else ImageStore(self.image_root, processor.image_processor))
        return self.store.pixels(paths)


class CaptionDataset(_Base):
    """One item per (image, caption) entry. Collate: the decoder input is the prompt
    plus the caption; `prompt_len` tokens ([CLS] + prompt) are masked from the loss."""

    def __init__(self, entries, image_root, num_frames: int = DEFAULT_FRAMES, prompt: str = CAPTION_PROMPT):
        super().__init__(entries, image_root, num_frames)
        for e in entries:
            if not isinstance(e.get("caption"), str) or self.media not in e:
                raise ValueError(f"caption entries need '{self.media}' and a string 'caption': {e}")
        self.prompt = prompt

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, i):
        e = self.entries[i]
        return e[self.media], e["caption"]

    def collate(self, items, processor) -> dict:
        paths, captions = zip(*items)
        ids, mask = _tokens(processor.tokenizer, [self.prompt + c for c in captions])
        prompt_len = len(processor.tokenizer(self.prompt).input_ids) - 1  # [CLS] + prompt, no [SEP]
        return {"pixel_values": self._pixels(list(paths), processor), "input_ids": ids, "attention_mask": mask,
                "prompt_len": prompt_len}

    def references(self) -> tuple[list[str], dict[str, list[str]]]:
        """Evaluation view: unique image paths in first-seen order, and their captions."""
        refs: dict[str, list[str]] = {}
        for e in self.entries:
            refs.setdefault(e[self.media], []).append(e["caption"])
        return list(refs), refs


def answer_weights(answers: list[str]) -> tuple[list[str], list[float]]:
    """BLIP's VQA recipe: each distinct answer weighted by its share of the annotations.
    ["2"] * 8 + ["two"] * 2 -> (["2", "two"], [0.8, 0.2])."""
    counts = Counter(a.strip() for a in answers)
    total = sum(counts.values())
    distinct = sorted(counts, key=lambda a: (-counts[a], a))
    return distinct, [counts[a] / total for a in distinct]


class VQADataset(_Base):
    """One item per question. Collate: question ids for the fusion encoder, and the
    flattened distinct answers with `answer_rows` (which question each belongs to)
    and `answer_weight` (its frequency), as BLIP's VQA fine-tuning does."""

    def __init__(self, entries, image_root, num_frames: int = DEFAULT_FRAMES):
        super().__init__(entries, image_root, num_frames)
        for e in entries:
            if not isinstance(e.get("question"), str) or not e.get("answer") or self.media not in e:
                raise ValueError(f"vqa entries need '{self.media}', 'question' and a non-empty 'answer' "
                                 f"(a list, or one string as in MSRVTT-QA): {e}")

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, i):
        e = self.entries[i]
        answers = e["answer"] if isinstance(e["answer"], list) else [e["answer"]]
        return e[self.media], e["question"], answers

    def collate(self, items, processor) -> dict:
        paths, questions, answer_lists = zip(*items)
        q_ids, q_mask = _tokens(processor.tokenizer, list(questions))
        flat, rows, weights = [], [], []
        for row, answers in enumerate(answer_lists):
            distinct, w = answer_weights(answers)
            flat += distinct
            rows += [row] * len(distinct)
            weights += w
        a_ids, a_mask = _tokens(processor.tokenizer, flat)
        return {"pixel_values": self._pixels(list(paths), processor), "input_ids": q_ids, "attention_mask": q_mask,
                "answer_ids": a_ids, "answer_mask": a_mask, "answer_rows": torch.tensor(rows),
                "answer_weight": torch.tensor(weights), "answers": list(answer_lists)}


class RetrievalDataset(_Base):
    """Training view: one item per (image, caption) pair, carrying the image's index so
    pairs of the same image count as positives of each other (BLIP's retrieval recipe).
    Evaluation view: `gallery()` -> images, texts, text->image and image->texts maps."""

    def __init__(self, entries, image_root, num_frames: int = DEFAULT_FRAMES):
        super().__init__(entries, image_root, num_frames)
        self.pairs: list[tuple[int, str]] = []
        for idx, e in enumerate(entries):
            caps = e.get("caption")
            caps = [caps] if isinstance(caps, str) else caps
            if not caps or self.media not in e:
                raise ValueError(f"retrieval entries need '{self.media}' and a non-empty 'caption' list: {e}")
            self.pairs += [(idx, c) for c in caps]

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        idx, text = self.pairs[i]
        return self.entries[idx][self.media], text, idx

    def collate(self, items, processor) -> dict:
        paths, texts, idx = zip(*items)
        ids, mask = _tokens(processor.tokenizer, list(texts))
        return {"pixel_values": self._pixels(list(paths), processor), "input_ids": ids, "attention_mask": mask,
                "image_idx": torch.tensor(idx), "texts": list(texts)}

    def gallery(self) -> tuple[list[str], list[str], list[int], list[list[int]]]:
        images = [e[self.media] for e in self.entries]  # image (or video) paths
        texts = [t for _, t in self.pairs]
        txt2img = [i for i, _ in self.pairs]
        img2txt: list[list[int]] = [[] for _ in images]
        for t, i in enumerate(txt2img):
            img2txt[i].append(t)
        return images, texts, txt2img, img2txt

    def pixels(self, paths: list[str], processor) -> torch.Tensor:
        return self._pixels(paths, processor)


DATASETS = {"caption": CaptionDataset, "vqa": VQADataset, "retrieval": RetrievalDataset}


def tokens(processor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> padded (ids, mask), truncated to MAX_TEXT_LEN like the training batches."""
    return _tokens(processor.tokenizer, texts)
