"""adapters.backbone.frames on real files made here (PyAV: MP4/H.264, WebM/VP8; PIL: GIF):
the uniformly sampled frames are the right frames of the clip, in order, and broken or
oversized files are refused with what was wrong."""

from __future__ import annotations

import numpy as np
import pytest

from adapters.backbone.frames import VideoError, VideoLimits, decode_video, sample_indices
from tests.video_helpers import gif, moving_square_frames, mp4, webm, webm_no_frames

N, SIZE = 12, 32
CLIP = moving_square_frames(N, size=SIZE)


def _square_x(frame) -> int:
    """Left edge of the red square on the middle row."""
    row = np.asarray(frame)[SIZE // 2].astype(int)
    red = (row[:, 0] > 180) & (row[:, 1] < 100)
    return int(np.argmax(red))


@pytest.mark.parametrize("write", [mp4, webm, gif], ids=["mp4", "webm", "gif"])
@pytest.mark.parametrize("num_frames", [1, 4, 12, 16])
def test_sampled_frames_are_the_clips_frames_in_order(write, num_frames):
    frames = decode_video(write(CLIP), num_frames)
    assert len(frames) == num_frames and all(f.size == (SIZE, SIZE) and f.mode == "RGB" for f in frames)
    want = [_square_x(CLIP[i]) for i in sample_indices(N, num_frames)]
    got = [_square_x(f) for f in frames]
    assert all(abs(g - w) <= 1 for g, w in zip(got, want)), (got, want)  # lossy codecs blur an edge by a pixel


@pytest.mark.parametrize("data, words, too_large", [
    (mp4(CLIP)[:1000], "truncated", False),
    (gif(CLIP)[:-100], "truncated GIF", False),
    (webm_no_frames(), "zero frames", False),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "not an accepted video container", False),
    (b"", "zero bytes", False),
], ids=["cut mp4", "cut gif", "empty webm", "png header", "no bytes"])
def test_broken_files_are_refused(data, words, too_large):
    with pytest.raises(VideoError, match=words) as exc:
        decode_video(data, 4)
    assert exc.value.too_large is too_large


def test_limits_are_checked_before_decoding():
    data = mp4(moving_square_frames(40))  # 4 s at 10 fps
    for limits, words in [(VideoLimits(max_seconds=2), "over the limit of 2 s"),
                          (VideoLimits(max_pixels=SIZE * SIZE - 1), "pixels per frame"),
                          (VideoLimits(max_frames=20), "more than 20 frames"),
                          (VideoLimits(max_bytes=100), "bytes is over the limit")]:
        with pytest.raises(VideoError, match=words) as exc:
            decode_video(data, 4, limits)
        assert exc.value.too_large
