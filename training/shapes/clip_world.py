"""Clips of the shapes world as files and as a pretraining stream.

    python -m training.shapes.world --out /tmp/world --seed 0 --n 12000 --clips 2000 --frames 8

`write_clips` (called by `training.shapes.world.generate` when --clips > 0) writes K clips as
MP4 files (H.264, PyAV) under videos/, and beside the image world's files, in the formats of
LAVIS's video sets (`training.data` reads them through its "video" key, unchanged):
- `pretrain_clips_{split}.json`: [{"video", "caption", "video_id"}], alt text
  (`training.shapes.motion.clip_alt_text`), half of the clips.
- `video_qa_{split}.json` (MSRVTT-QA style): [{"video", "question", "answer": [10 x str],
  "question_id", "question_type"}], questions only watching answers (`clip_questions`).
- `video_retrieval_{split}.json` (DiDeMo / MSRVTT style): [{"video", "caption": [str],
  "video_id", "hard_negatives": [the sibling's captions]}]; siblings are adjacent, same split.
- `video_caption_{split}.json`: [{"video", "caption", "video_id"}], the canonical style.

`AltTextClips` is the clip side of `training.shapes.world.AltTextPairs`: item p = sibling clip
pair p of the clip pretraining pool, frames rendered on the fly; its batches have pixels
(N, F, 3, H, W), which `training.losses.pretrain_loss` runs as BLIP's video transfer.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import Dataset

from training.shapes.clips import DEFAULT_FRAMES, POOL_CLIP_DOWNSTREAM, POOL_CLIP_PRETRAIN, clip_pair, render_clip
from training.shapes.motion import canonical_clip_captions, clip_alt_text, clip_holds, clip_questions
from training.shapes.world import CONTRAST_SHARE, SPLITS, SiblingStream, _answers, _units, text_fields

FPS = 8  # frames per second of the written files: an 8-frame clip lasts one second


def encode_mp4(frames: list, fps: int = FPS) -> bytes:
    """RGB frames (PIL or (H, W, 3) uint8; even sides) -> the bytes of an H.264 MP4 holding
    exactly those frames (as tests/video_helpers.py writes them)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        first = np.asarray(frames[0])
        stream.height, stream.width = first.shape[:2]
        # full-resolution chroma, near-lossless: yuv420p halves the colour resolution of 10 px shapes
        # (mean error 4.5 vs 1.3 grey levels at 32 px, crf 12; measured on 10 clips)
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "12"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(f, dtype=np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def write_clips(out: Path, seed: int, n_clips: int, size: int, frames: int = DEFAULT_FRAMES,
                pretrain_frac: float = 0.5) -> tuple[dict[str, list], set[str]]:
    """Writes the clips' MP4s under out/videos; returns (JSON file name -> entries, texts)."""
    n_pre = int(round(n_clips * pretrain_frac)) // 2  # sibling pairs in the pretraining pool
    n_down = (n_clips - 2 * n_pre) // 2
    if min(min(_units(n_pre).values()), min(_units(n_down).values())) < 1:
        raise ValueError(f"--clips {n_clips} leaves a split without clips; use --clips >= 20")
    (out / "videos").mkdir(parents=True, exist_ok=True)
    files: dict[str, list] = {f"{t}_{s}": [] for t in ("pretrain_clips", "video_caption", "video_qa",
                                                      "video_retrieval") for s in SPLITS}
    texts: set[str] = set()

    def save(name: str, clip, rng: np.random.Generator) -> str:
        rel = f"videos/{name}.mp4"
        (out / rel).write_bytes(encode_mp4(render_clip(clip, int(rng.integers(2**31)))))
        return rel

    for split, count in _units(n_pre).items():
        for p in range(count):
            rng, *pair = clip_pair(seed, POOL_CLIP_PRETRAIN, split, p, size, frames)
            for k, clip in enumerate(pair):
                video_id = f"clip_pre_{split}_{p:06d}_{k}"
                caption, _ = clip_alt_text(rng, clip, contrast=pair[1 - k], contrast_share=CONTRAST_SHARE)
                files[f"pretrain_clips_{split}"].append({"video": save(video_id, clip, rng), "caption": caption,
                                                         "video_id": video_id})
                texts.add(caption)

    for split, count in _units(n_down).items():
        for p in range(count):
            rng, *pair = clip_pair(seed, POOL_CLIP_DOWNSTREAM, split, p, size, frames)
            caps = [canonical_clip_captions(c) for c in pair]
            for k, clip in enumerate(pair):
                video_id = f"clip_down_{split}_{p:06d}_{k}"
                rel = save(video_id, clip, rng)
                for c in caps[k]:
                    files[f"video_caption_{split}"].append({"video": rel, "caption": c, "video_id": video_id})
                files[f"video_retrieval_{split}"].append({"video": rel, "caption": caps[k], "video_id": video_id,
                                                          "hard_negatives": caps[1 - k]})
                for q, (kind, question, answer, _) in enumerate(clip_questions(rng, clip)):
                    files[f"video_qa_{split}"].append({"video": rel, "question": question, "answer": _answers(answer),
                                                       "question_id": f"{video_id}_{q}", "question_type": kind})
                    texts.update([question, answer])
                texts.update(caps[k])
    return files, texts


class AltTextClips(SiblingStream):
    """The clip stream: sibling clip pairs of the clip pretraining pool's `split` with alt text,
    frames rendered on demand ((clip, frames, text, description, cut) x 2), as `AltTextPairs`
    gives image pairs."""

    def __init__(self, seed: int, split: str, n_pairs: int, image_size: int, frames: int = DEFAULT_FRAMES,
                 start: int = 0, contrast_share: float = CONTRAST_SHARE):
        self.seed, self.split, self.n_pairs, self.image_size = seed, split, n_pairs, image_size
        self.frames, self.start, self.contrast_share = frames, start, contrast_share

    def pair(self, index: int):
        return clip_pair(self.seed, POOL_CLIP_PRETRAIN, self.split, index, self.image_size, self.frames)

    def text(self, rng, x, sibling):
        return clip_alt_text(rng, x, contrast=sibling, contrast_share=self.contrast_share)

    def draw(self, x, seed: int):
        return render_clip(x, seed)

    def collate(self, items, processor) -> dict:
        rows = [r for pair in items for r in pair]
        clips, frames, texts, descs, cuts = zip(*rows)
        n, f = len(rows), len(frames[0])
        pixels = processor.image_processor([im for fr in frames for im in fr], return_tensors="pt")["pixel_values"]
        positive = torch.tensor([[clip_holds(d, c) for d in descs] for c in clips])  # (N, N) clips x texts
        return {"pixel_values": pixels.view(n, f, *pixels.shape[1:]),  # (N, F, 3, H, W), each clip's frames in order
                **text_fields(processor.tokenizer, texts, cuts), "positive": positive}


class ClipShare(Dataset):
    """The pretraining stream with a share of clip steps (training.shapes.pretrain --clip-share).
    Global step k is a clip step when floor((k + 1) * share) > floor(k * share) (share 0.25:
    steps 3, 7, 11, ...; exact over any run length); a clip step takes the clip pairs at its
    first `clip_batch_pairs` indices, an image step the image pairs at all of them. A batch is
    a pure function of (step, indices), which training.loop's `collate_step` hook passes."""

    def __init__(self, pairs: Dataset, clips: AltTextClips, share: float, clip_batch_pairs: int):
        if len(clips) < len(pairs) or not 0 < share <= 1:
            raise ValueError("the clip stream must cover the image stream's indices, and 0 < share <= 1")
        self.pairs, self.clips, self.share, self.clip_batch_pairs = pairs, clips, share, clip_batch_pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        return self.pairs[i]

    def is_clip_step(self, step: int) -> bool:
        return int((step + 1) * self.share) > int(step * self.share)

    def collate_step(self, step: int, idx: list[int], processor) -> dict:
        if self.is_clip_step(step):
            return self.clips.collate([self.clips[i] for i in idx[:self.clip_batch_pairs]], processor)
        return self.pairs.collate([self.pairs[i] for i in idx], processor)
