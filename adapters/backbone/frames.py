"""Video bytes -> uniformly sampled RGB frames, with limits; one definition for serving and training.

    frames = decode_video(open("clip.mp4", "rb").read(), num_frames=8, limits=VideoLimits())
    frames = sample(list_of_pil_frames, 8)            # a list of frames sampled the same way
    pv = tasks.video_pixels(bb, [frames])             # (1, 8, 3, H, W)

Containers: MP4/MOV, WebM/Matroska and GIF (animated or not), decoded by PyAV (its bundled
FFmpeg). Anything else (a PNG, random bytes, audio only) is refused, as are empty streams,
truncated (`_check_complete`) or corrupt files, and videos over the limits: bytes (before opening), pixels per
frame (from the stream header, before decoding), duration and frame count (while demuxing,
before decoding). Every refusal is a `VideoError` whose `too_large` says whether a limit
was hit (the server answers 413) or the bytes are bad (400).

Sampling (BLIP/LAVIS "uniform"): the video's n frames are cut into `num_frames` equal
segments and the middle frame of each is taken; a video shorter than `num_frames` repeats
frames, so a request always yields exactly `num_frames` frames.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

# FFmpeg demuxer names PyAV reports (container.format.name) for the accepted containers
CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2": "MP4", "matroska,webm": "WebM", "gif": "GIF"}


class VideoError(ValueError):
    def __init__(self, message: str, *, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int = 50 * 2**20
    max_pixels: int = 1920 * 1080  # per frame (width * height)
    max_seconds: float = 120.0
    max_frames: int = 10_000  # frames in the file (demuxed packets), whatever the duration says


def sample_indices(n: int, num_frames: int) -> list[int]:
    """Middle of each of `num_frames` equal segments of n frames: (num_frames,) indices in [0, n)."""
    if n < 1 or num_frames < 1:
        raise ValueError(f"cannot sample {num_frames} frames from {n}")
    return [min(n - 1, int((i + 0.5) * n / num_frames)) for i in range(num_frames)]


def sample(frames: list, num_frames: int) -> list:
    return [frames[i] for i in sample_indices(len(frames), num_frames)]


def decode_video(data: bytes, num_frames: int, limits: VideoLimits = VideoLimits(), field: str = "video"
                 ) -> list[Image.Image]:
    """Video file bytes -> `num_frames` RGB PIL frames, or a VideoError saying what was wrong."""
    import av  # imported here: a server that never sees a video never loads FFmpeg

    if not data:
        raise VideoError(f"{field}: zero bytes; send a video file (MP4, WebM or GIF)")
    if len(data) > limits.max_bytes:
        raise VideoError(f"{field}: {len(data)} bytes is over the limit of {limits.max_bytes}", too_large=True)
    picked: dict[int, Image.Image] = {}
    last = None  # the last frame decoded (an av.VideoFrame), converted only if a target needs it
    try:
        n, stream_index = _count_frames(av, data, limits, field)
        wanted = sample_indices(n, num_frames)
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[stream_index]
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    picked[i] = frame.to_image().convert("RGB")
                last = (i, frame)
                if i >= wanted[-1]:
                    break
    except VideoError:
        raise
    except EOFError:  # FFmpeg reached the end early
        if last is None:
            raise VideoError(f"{field}: zero frames: the file ends before its first frame (an empty stream, or "
                             "cut short)") from None
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise VideoError(f"{field}: corrupt or truncated video ({type(exc).__name__}: {exc})") from None
    if last is None:
        raise VideoError(f"{field}: the video stream decodes to zero frames")
    # a decoder may yield fewer frames than the demuxer counted packets (a truncated tail):
    # targets past the end take the last frame decoded
    if last[0] not in picked:
        picked[last[0]] = last[1].to_image().convert("RGB")
    have = sorted(picked)
    return [picked[max([j for j in have if j <= i], default=have[0])] for i in wanted]


def _count_frames(av, data: bytes, limits: VideoLimits, field: str) -> tuple[int, int]:
    """Demux without decoding: (frame count, video stream index), checking container, size,
    duration and frame count first."""
    with av.open(io.BytesIO(data), mode="r") as container:
        kind = CONTAINERS.get(container.format.name)
        if kind is None:
            raise VideoError(f"{field}: {container.format.name!r} is not an accepted video container "
                             f"(MP4, WebM or GIF)")
        if not container.streams.video:
            raise VideoError(f"{field}: the {kind} file has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > limits.max_pixels:
            raise VideoError(f"{field}: {width}x{height} pixels per frame is over the limit of {limits.max_pixels}",
                             too_large=True)
        if container.duration is not None and container.duration / 1e6 > limits.max_seconds:
            raise VideoError(f"{field}: {container.duration / 1e6:.1f} s is over the limit of {limits.max_seconds:g} s",
                             too_large=True)
        n, end = 0, 0.0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the demuxer's flush packet
                    continue
                n += 1
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
                if end > limits.max_seconds:
                    raise VideoError(f"{field}: longer than the limit of {limits.max_seconds:g} s", too_large=True)
                if n > limits.max_frames:
                    raise VideoError(f"{field}: more than {limits.max_frames} frames", too_large=True)
        except EOFError:  # a stream cut short: refused below (zero frames, or short of its declared length)
            pass
        if n == 0:
            raise VideoError(f"{field}: the video stream has zero frames (an empty stream, or a file cut short)")
        _check_complete(data, kind, container, stream, end, field)
        return n, 0  # the first video stream (index into container.streams.video)


def _check_complete(data: bytes, kind: str, container, stream, end: float, field: str) -> None:
    """Refuse a file cut short, which demuxers otherwise read up to the cut: a GIF without its
    trailer byte, or frames ending well before the duration the header declares (the stream's
    own, or the container's when the video is its only stream: audio may outlast video)."""
    if kind == "GIF" and not data.endswith(b";"):
        raise VideoError(f"{field}: truncated GIF (no trailer after {len(data)} bytes)")
    declared = None
    if stream.duration and stream.time_base:
        declared = float(stream.duration * stream.time_base)
    elif container.duration and len(container.streams) == 1:
        declared = container.duration / 1e6
    if declared and end < 0.9 * declared - 1e-3:
        raise VideoError(f"{field}: truncated {kind}: its frames end at {end:.2f} s of the {declared:.2f} s "
                         "its header declares")
