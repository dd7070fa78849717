"""Video datasets are segmented frame by frame from frame-level demonstrations."""

import shutil

import cv2
import fiftyone as fo
import numpy as np
import pytest

from conceptseg.runs import jobs

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="video needs ffmpeg (scripts/setup.sh)")


def _write_video(path, frames):
    import eta.core.video as etav

    height, width = frames[0].shape[:2]
    with etav.FFmpegVideoWriter(path, 5, (width, height), out_opts=["-c:v", "libx264rgb", "-crf", "0"]) as writer:
        for frame in frames:
            writer.write(frame)


def _frames(rng, count, red=True):
    """Frames of a red disc (the concept) and a blue square drifting over gray noise; their disc masks."""
    images, masks = [], []
    for i in range(count):
        image = np.clip(rng.normal(128, 10, (96, 128, 3)), 0, 255).astype(np.uint8)
        disc = np.zeros((96, 128), np.uint8)
        if red:
            cv2.circle(disc, (30 + 4 * i, 40), 12, 1, -1)
            image[disc > 0] = (220, 40, 40)
        cv2.rectangle(image, (90 - 3 * i, 60), (110 - 3 * i, 80), (40, 60, 220), -1)
        images.append(image)
        masks.append(disc > 0)
    return images, masks


@pytest.fixture
def videos(name, tmp_path):
    rng = np.random.default_rng(0)
    dataset = fo.Dataset(name)
    truth = {}
    for v, red in enumerate((True, True, False)):
        images, masks = _frames(rng, 8, red=red)
        path = str(tmp_path / f"clip{v}.mp4")
        _write_video(path, images)
        sample = fo.Sample(filepath=path, tags=["demo"] if v == 0 else [])
        if v == 0:
            for n in (1, 4, 7):
                sample.frames[n]["gt"] = fo.Segmentation(mask=masks[n - 1].astype(np.uint8))
        dataset.add_sample(sample)
        truth[sample.id] = masks
    return dataset, truth


def _ious(dataset, truth, field="pred"):
    out = []
    for sample in dataset.match_tags("demo", bool=False):
        for n, frame in sample.frames.items():
            pred = frame[field].get_mask() > 0
            gt = truth[sample.id][n - 1]
            union = (pred | gt).sum()
            out.append((pred & gt).sum() / union if union else 1.0 - pred.mean())
    return out


def test_tagged_video_demonstrates_with_its_labelled_frames(videos):
    dataset, truth = videos
    summary = jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "gt", "pred", route="appearance")
    assert summary["demonstrations"] == 3
    assert summary["targets"] == 8 * 3 - 3  # every frame but the three demonstration frames
    assert summary["segmented"] == 21 and not summary["failures"]
    ious = _ious(dataset, truth)
    assert len(ious) == 16 and np.mean(ious) >= 0.8
    demo_video = dataset.match_tags("demo").first()
    assert demo_video.frames[1]["pred"] is None and demo_video.frames[2]["pred"] is not None
    assert dataset.get_run_info("conceptseg_pred").config.frames is True
    assert dataset.mask_targets["frames.pred"] == {1: "concept"}


def test_frames_selected_in_a_frames_view(videos):
    dataset, truth = videos
    frames = dataset.to_frames(sample_frames="dynamic")
    demos = frames.exists("gt")
    summary = jobs.segment_by_demonstration(demos, frames, "gt", "pred", route="appearance")
    assert summary["segmented"] == 21
    assert np.mean(_ious(dataset, truth)) >= 0.8


def test_a_video_without_decodable_frames_fails_alone(videos, tmp_path):
    dataset, _ = videos
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    sample = fo.Sample(filepath=str(broken))
    sample.frames[1] = fo.Frame()
    dataset.add_sample(sample)
    summary = jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "gt", "pred", route="appearance")
    assert summary["segmented"] == 21
    assert [f["sample_id"] for f in summary["failures"]] and all("broken.mp4" in f["error"] for f in summary["failures"])


def test_patches_views_are_refused_with_what_to_run():
    from conceptseg.errors import ConceptSegError

    dataset = fo.Dataset()
    try:
        dataset.add_sample(fo.Sample(filepath="/nonexistent.png", gt=fo.Detections(
            detections=[fo.Detection(label="a", bounding_box=[0.1, 0.1, 0.2, 0.2])])))
        patches = dataset.to_patches("gt")
        with pytest.raises(ConceptSegError, match="Patches views cannot be segmented.*source images"):
            jobs.segment_by_demonstration(patches, patches, "gt", "pred")
    finally:
        dataset.delete()


def test_clips_are_segmented_frame_by_frame(videos):
    dataset, truth = videos
    clips = dataset.to_clips([[(2, 6)]] * len(dataset))
    summary = jobs.segment_by_demonstration(dataset.match_tags("demo"), clips, "gt", "pred", route="appearance")
    assert summary["targets"] == 5 * 3 - 1  # frame 4 of the first video is a demonstration
    assert summary["segmented"] == 14 and not summary["failures"]
    second = dataset.match_tags("demo", bool=False).first()
    assert second.frames[2]["pred"] is not None and second.frames[7]["pred"] is None


def test_frame_field_classes_by_name(videos):
    dataset, truth = videos
    dataset.mask_targets = {"frames.gt": {1: "disc"}}
    dataset.save()
    summary = jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "gt", "pred",
                                            route="appearance", classes=["disc"])
    assert summary["classes"] == ["disc"] and summary["segmented"] == 21
    assert dataset.mask_targets["frames.pred"] == {1: "disc"}
