"""Request and response bodies of the HTTP API, named for what they are.

Images travel as base64 strings in JSON (a `data:` URL prefix is accepted), or as
a multipart file field named `image` for /caption and /vqa. Bounds that depend on
settings (text length, top_k, beams) are checked by the routes with the settings
at hand; the static shape is checked here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # adapter and gallery names: never paths


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_fanout(body):
    """'adapter' xor 'adapters'; fan-out names unique."""
    names = getattr(body, "adapters", None)
    if names is not None:
        if body.adapter is not None:
            raise ValueError("give 'adapter' (one) or 'adapters' (fan-out), not both")
        if len(set(names)) != len(names):
            raise ValueError("adapters: names must be unique")
    return body


# -- tasks ------------------------------------------------------------------------
class CaptionRequest(Body):
    _fanout = model_validator(mode="after")(check_fanout)

    image: str = Field(..., description="base64 image bytes (PNG, JPEG, GIF, BMP, WebP, TIFF)")
    adapter: str | None = Field(None, description="adapter name; 'none' = frozen backbone; omitted = task default")
    adapters: list[str] | None = Field(None, min_length=1, description="fan-out: several adapter names (unique; "
                                       "'none' = frozen backbone); one result per adapter, in this order, under "
                                       "'per_adapter'. Not with 'adapter'")
    max_new_tokens: int | None = Field(None, ge=1, description="caption length limit in tokens; default 30")
    num_beams: int | None = Field(None, ge=1, description="beam width; default 1 (greedy)")


class CaptionResponse(BaseModel):
    caption: str
    adapter: str = Field(..., description="the adapter that served it ('none' = frozen backbone)")


class CaptionFanoutResponse(BaseModel):
    per_adapter: list[CaptionResponse] = Field(..., description="one result per requested adapter, in order")


VIDEO_DOC = ("video: base64 of a video file (MP4, WebM, GIF) or a list of base64 frames; sampled uniformly "
             "to num_frames")


class VqaRequest(Body):
    _fanout = model_validator(mode="after")(check_fanout)

    image: str | None = Field(None, description="base64 image; give exactly one of image or video")
    video: str | list[str] | None = Field(None, description=VIDEO_DOC)
    num_frames: int | None = Field(None, ge=1, description="video frames sampled (default: the server's)")
    question: str = Field(..., min_length=1)
    adapter: str | None = None
    adapters: list[str] | None = Field(None, min_length=1, description="fan-out: several adapter names (unique; "
                                       "'none' = frozen backbone); one result per adapter, in this order, under "
                                       "'per_adapter'. Not with 'adapter'")
    candidates: list[str] | None = Field(None, min_length=1, description="rank these answers instead of generating")
    max_new_tokens: int | None = Field(None, ge=1, description="answer length limit in tokens; default 10")
    num_beams: int | None = Field(None, ge=1, description="beam width; default 3 (1 = greedy)")

    @model_validator(mode="after")
    def _image_or_video(self):
        if (self.image is None) == (self.video is None):
            raise ValueError("give exactly one of 'image' or 'video'")
        if self.num_frames is not None and self.video is None:
            raise ValueError("num_frames: applies to a video")
        return self


class VqaResponse(BaseModel):
    answer: str
    adapter: str
    scores: dict[str, float] | None = Field(None, description="log-likelihood of each candidate (when given)")


class VqaFanoutResponse(BaseModel):
    per_adapter: list[VqaResponse] = Field(..., description="one result per requested adapter, in order")


class InlineImage(Body):
    id: str = Field(..., min_length=1, max_length=200)
    image: str


class InlineVideo(Body):
    id: str = Field(..., min_length=1, max_length=200)
    video: str | list[str] = Field(..., description=VIDEO_DOC)


class InlineText(Body):
    id: str = Field(..., min_length=1, max_length=200)
    text: str = Field(..., min_length=1)


class RetrieveRequest(Body):
    """Text -> image/video: `text` with `gallery` (an image or video gallery), `images` or `videos`.
    Image/video -> text: `image` or `video` with `texts` or `gallery` (a text gallery)."""

    text: str | None = Field(None, min_length=1)
    image: str | None = None
    video: str | list[str] | None = Field(None, description=VIDEO_DOC)
    num_frames: int | None = Field(None, ge=1, description="frames sampled from each video of the request")
    gallery: str | None = None
    images: list[InlineImage] | None = Field(None, min_length=1)
    videos: list[InlineVideo] | None = Field(None, min_length=1)
    texts: list[InlineText] | None = Field(None, min_length=1)
    top_k: int = Field(5, ge=1, description="results returned (and ITM re-ranked)")
    adapter: str | None = None
    adapters: list[str] | None = Field(None, min_length=1, description="fan-out: several adapter names (unique; "
                                       "'none' = frozen backbone); one result per adapter, in this order, under "
                                       "'per_adapter'. Not with 'adapter'")
    rerank: bool = Field(True, description="re-rank the ITC top-k with the ITM head")
    filter: dict[str, Any] | None = Field(
        None, description='gallery searches only: e.g. {"metadata.colour": "red"}, {"metadata.n": {"$gte": 2}}, '
                          '{"$or": [...]}; grammar in docs/serving.md')

    @model_validator(mode="after")
    def _one_direction(self):
        if sum(q is not None for q in (self.text, self.image, self.video)) != 1:
            raise ValueError("give exactly one query: 'text' (text->image/video), 'image' (image->text) "
                             "or 'video' (video->text)")
        if self.text is not None and sum(x is not None for x in (self.gallery, self.images, self.videos)) != 1:
            raise ValueError("a text query needs exactly one of 'gallery' (image or video gallery), 'images' "
                             "or 'videos'")
        if self.text is None and (self.gallery is None) == (self.texts is None):
            raise ValueError(f"an {'image' if self.image is not None else 'video'} query needs exactly one of "
                             "'gallery' (text gallery) or 'texts'")
        if self.text is not None and self.texts is not None or self.text is None and (self.images or self.videos):
            raise ValueError("inline items must be of the other modality than the query")
        if self.num_frames is not None and self.video is None and self.videos is None:
            raise ValueError("num_frames: applies to a video query or inline videos")
        return check_fanout(self)


class Hit(BaseModel):
    id: str
    score: float = Field(..., description="re-ranked: ITM logit(match) + ITC cosine (BLIP's retrieval score); "
                                          "else ITC cosine")
    itc: float = Field(..., description="ITC cosine similarity")
    metadata: dict[str, Any] | None = None


class RetrieveResponse(BaseModel):
    results: list[Hit]
    adapter: str
    direction: Literal["text_to_image", "image_to_text", "text_to_video", "video_to_text"]


class RetrieveFanoutResponse(BaseModel):
    per_adapter: list[RetrieveResponse] = Field(..., description="one result per requested adapter, in order")


# -- galleries --------------------------------------------------------------------
class GalleryCreate(Body):
    name: str = Field(..., pattern=NAME_PATTERN)
    kind: Literal["image", "text", "video"] = "image"


class GalleryItem(Body):
    id: str = Field(..., min_length=1, max_length=200)
    image: str | None = None
    text: str | None = Field(None, min_length=1)
    video: str | list[str] | None = Field(None, description=VIDEO_DOC + " (the server's video_num_frames)")
    metadata: dict[str, Any] = Field(default_factory=dict)


class GalleryAdd(Body):
    items: list[GalleryItem] = Field(..., min_length=1)
    adapter: str | None = Field(None, description="compute ITC vectors with this adapter now (default: task default)")


class GalleryDeleteItems(Body):
    ids: list[str] = Field(..., min_length=1)


class GalleryInfo(BaseModel):
    name: str
    kind: Literal["image", "text", "video"]
    size: int
    adapters: list[str] = Field(..., description="adapters whose ITC vectors are stored")
    index: Literal["exact", "ivf_pq"] = Field(..., description="ivf_pq once any adapter's vectors are indexed")
    indexed: list[str] = Field(default_factory=list, description="adapters whose vectors have an IVF-PQ index")


class GalleryIndex(Body):
    adapter: str | None = Field(None, description="index this adapter's vectors (default: the retrieval default; "
                                                  "a video gallery: the video retrieval default)")


class GalleryList(BaseModel):
    galleries: list[GalleryInfo]


class GalleryChange(BaseModel):
    gallery: str
    added: list[str] = Field(default_factory=list)
    replaced: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    size: int


# -- adapters ---------------------------------------------------------------------
class AdapterInfo(BaseModel):
    name: str
    kind: str | None = None
    task: str | None = None
    rank: int | None = None
    trainable_params: int | None = None
    bytes: int | None = None
    backbone_fingerprint: str | None = None
    loaded: bool
    pinned: bool
    default_for: list[str] = Field(default_factory=list)
    error: str | None = Field(None, description="why the file cannot be loaded, if it cannot")


class AdapterList(BaseModel):
    adapters: list[AdapterInfo]
    backbone_fingerprint: str
    capacity: int


# -- health -----------------------------------------------------------------------
class Ready(BaseModel):
    ready: bool
    backbone: str
    fingerprint: str
    tasks: list[str]
    adapters_loaded: int
    defaults: dict[str, str] = Field(..., description="adapter each task ('vqa') and video task ('video-vqa') "
                                                      "uses when a request names none")
