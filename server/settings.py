"""Every server setting, in one place: `Settings` reads `UNITRANS_*` environment
variables; `python -m server` flags override them.

    UNITRANS_BACKBONE='["/models/blip-cap", "/models/blip-vqa"]'   # a JSON list (or one path, or a,b)
    UNITRANS_ADAPTERS='["./my-adapters", "/shared/adapters"]'      # served beside models/adapters
    UNITRANS_API_KEY=secret UNITRANS_MAX_BATCH_SIZE=32 python -m server

With no backbone given the server serves the shipped default, `models/blip-shapes`;
the shipped adapters `models/adapters` are served beside any adapter directories
given (`shipped_adapters=False` leaves them out); both are found next to this package
(not relative to the CWD).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BACKBONE = ROOT / "models" / "blip-shapes"
DEFAULT_ADAPTERS = ROOT / "models" / "adapters"
DEFAULT_DATA = ROOT / "data"
TASKS = ("caption", "vqa", "retrieve")
VIDEO_TASKS = ("vqa", "retrieve")  # tasks taking a video, each with its own default adapter
# (task, video) of every default adapter setting; video defaults are named "video-<task>" in listings
DEFAULT_SLOTS = tuple((t, False) for t in TASKS) + tuple((t, True) for t in VIDEO_TASKS)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNITRANS_", extra="forbid")

    # -- what to serve ----------------------------------------------------------------
    backbone: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="backbone dirs, parts taken from the first that has them; [] = default")
    adapters: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="directories of <name>.safetensors adapter files, served beside "
                                          "models/adapters; a name in two directories is refused at start")
    shipped_adapters: bool = Field(True, description="also serve the shipped models/adapters (made for models/blip-shapes)")
    data: Path = Field(DEFAULT_DATA, description="local state; galleries default to <data>/lancedb")
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "cpu"
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads for the model worker; 0 = torch default")
    # Adapters named by no request: a task's default if this file exists; "none" = frozen backbone.
    default_caption_adapter: str = "caption"
    default_vqa_adapter: str = "vqa"
    default_retrieve_adapter: str = "retrieval"
    # A request carrying a video (or searching videos) and naming no adapter: this default when
    # usable, else the image task's default above; "none" = frozen backbone for videos.
    default_video_vqa_adapter: str = "video-vqa"
    default_video_retrieve_adapter: str = "video-retrieval"
    adapter_capacity: int = Field(32, ge=1, description="adapter table slots (LRU, defaults pinned)")

    # -- network ----------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = None  # set -> every route but /healthz, /readyz, /docs needs Bearer
    log_level: str = "info"

    # -- batching ---------------------------------------------------------------------
    max_batch_size: int = Field(32, ge=1)
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for more requests")
    # "batch": a caption batch decodes to its end together; "continuous": greedy captions join and
    # leave a running decode at token boundaries (server/continuous.py). Beams and VQA: always batch.
    caption_scheduler: Literal["batch", "continuous"] = "batch"
    caption_join_steps: int = Field(4, ge=1, description="continuous: while a decode runs, waiting captions join "
                                    "once they fill its free rows or every this many steps (a join re-folds the "
                                    "batch's per-row adapter matrices, ~half a step)")
    queue_size: int = Field(256, ge=1, description="waiting requests per task before 503")
    request_timeout_s: float = Field(60.0, gt=0)
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503")
    image_cache_mb: float = Field(256.0, ge=0, description="image-feature cache (ViT output tokens per image and "
                                                           "vision-side adapter state), LRU; 0 = off")
    max_fanout: int = Field(16, ge=1, description="adapters one request may name in `adapters`")
    decode_workers: int = Field(0, ge=0, description="processes decoding and preprocessing images off the "
                                                     "model's GIL; 0 = threads of the server process")

    # -- input bounds -----------------------------------------------------------------
    max_request_bytes: int = Field(64 * 2**20, ge=1024)
    max_image_bytes: int = Field(10 * 2**20, ge=64)
    max_image_pixels: int = Field(40_000_000, ge=1, description="width*height; larger is refused as a bomb")
    max_text_chars: int = Field(512, ge=1)
    max_text_tokens: int = Field(40, ge=4, description="questions and texts are truncated to this many tokens")
    max_candidates: int = Field(64, ge=1)
    max_inline_items: int = Field(256, ge=1, description="inline images/texts per /retrieve or gallery add")
    max_new_tokens_limit: int = Field(64, ge=1)
    max_beams_limit: int = Field(8, ge=1)
    max_top_k: int = Field(100, ge=1)

    # -- video (server/videos.py) -------------------------------------------------------
    video_num_frames: int = Field(8, ge=1, description="frames sampled when a request gives no num_frames; "
                                                       "gallery videos are stored at this count")
    max_video_num_frames: int = Field(16, ge=1, description="num_frames limit per request")
    max_video_bytes: int = Field(50 * 2**20, ge=64, description="a video file's bytes")
    max_video_seconds: float = Field(120.0, gt=0, description="a video file's duration")
    max_video_pixels: int = Field(1920 * 1080, ge=1, description="width*height of one frame")
    max_video_file_frames: int = Field(10_000, ge=1, description="frames in a video file (whatever its duration)")
    max_video_list_frames: int = Field(64, ge=1, description="base64 frames in a JSON frame list")

    # -- galleries --------------------------------------------------------------------
    galleries: str | None = Field(None, description="LanceDB URI of the gallery store: a directory, s3://, gs://, "
                                                    "az://; shared by replicas; None = <data>/lancedb")
    gallery_storage_options: dict[str, str] = Field(
        default_factory=dict, description="LanceDB storage options for object storage (region, endpoint, ...)")
    gallery_index_threshold: int = Field(100_000, ge=1, description="a vector space this large gets an IVF-PQ index")

    @field_validator("backbone", "adapters", mode="before")
    @classmethod
    def _paths(cls, value):
        if isinstance(value, (str, Path)):
            text = str(value).strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [p for p in text.split(",") if p] if text else []
        return value

    @model_validator(mode="after")
    def _video_frames(self):
        if self.video_num_frames > self.max_video_num_frames:
            raise ValueError(f"video_num_frames ({self.video_num_frames}) is over max_video_num_frames "
                             f"({self.max_video_num_frames})")
        return self

    def gallery_uri(self) -> str:
        return self.galleries or str(self.data / "lancedb")

    def backbone_dirs(self) -> list[Path]:
        return list(self.backbone) or [DEFAULT_BACKBONE]

    def adapter_dirs(self) -> list[Path]:
        """The user's adapter directories, then the shipped one; each directory once."""
        dirs = list(self.adapters) + ([DEFAULT_ADAPTERS] if self.shipped_adapters else [])
        seen, out = set(), []
        for d in dirs:
            key = Path(d).expanduser().resolve()
            if key not in seen:
                seen.add(key)
                out.append(Path(d).expanduser())
        return out

    def default_adapter(self, task: str, video: bool = False) -> str:
        """The configured default name of `task` for images, or for videos (vqa, retrieve)."""
        if video:
            return {"vqa": self.default_video_vqa_adapter, "retrieve": self.default_video_retrieve_adapter}[task]
        return {"caption": self.default_caption_adapter, "vqa": self.default_vqa_adapter,
                "retrieve": self.default_retrieve_adapter}[task]


def slot_label(task: str, video: bool) -> str:
    """How a default is named in /readyz and an adapter's default_for: 'vqa', 'video-vqa'."""
    return f"video-{task}" if video else task


def missing_default_message(path: Path) -> str:
    return (f"the default backbone {path} does not exist yet. Build it with "
            "`.venv/bin/python -m training.shapes.pretrain` (see README), or serve another one with "
            "`python -m server --backbone DIR` (e.g. a local Salesforce/blip-* directory).")
