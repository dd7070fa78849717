"""SAM 3 prompted with exemplar boxes drawn on other images: encode once, detect in many.

SAM 3's Promptable Concept Segmentation takes exemplar boxes (positive and negative) as well
as a noun phrase and returns every instance of the concept. Its geometry encoder turns boxes
into prompt tokens from the image they are drawn on (the boxes' coordinates, the image
features pooled under each box by ROI align, then attention to that image), and
``Sam3Model.forward`` appends those tokens after the text features before the fusion encoder.

Our exemplars are drawn on the demonstrations, not on the target. Rather than pasting the
demonstrations beside each target on one canvas (the target would lose half of SAM 3's
1008 px, and no demonstration's features could be reused: the ViT attends globally, so every
canvas is a new encoding), ``encode_boxes`` runs the geometry encoder on each demonstration's
own cached features, once per run, and ``detect`` appends the tokens after the text features
of every target's prompt: the slot the geometry tokens take in ``Sam3Model.forward``. What a
token carries across images is what its box pooled (the concept's appearance) plus where the
box was on its own image, a bias that many boxes at many places average out.

``detect`` reads SAM 3's instance outputs (``pred_masks``, ``pred_logits``, ``presence_logits``),
as ``Sam3Processor.post_process_instance_segmentation`` does: an instance's score is
sigmoid(logit) x presence; kept instances are those scoring above ``min_score``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from conceptseg.segmenters.cache import check_finite_output
from conceptseg.segmenters.sam3_outputs import Detections

BOX_ONLY_TEXT = "visual"  # SAM 3's text prompt when only boxes are given (Sam3Processor)


def encode_boxes(segmenter, entry: dict, boxes: Sequence[Sequence[float]], labels: Sequence[int]) -> torch.Tensor:
    """(T, D) prompt tokens of ``boxes`` (x0 y0 x1 y1, pixels) on an embedded image.

    entry: the image's features, ``segmenter.features(key)`` after ``segmenter.embed(image, key)``.

    labels: 1 for a positive exemplar, 0 for a negative one. T = len(boxes) + 1: the geometry
    encoder adds its CLS token. The segmenter stays frozen (no gradient).
    """
    if len(boxes) == 0 or len(boxes) != len(labels):
        raise ValueError(f"need one label per box and at least one box; got {len(boxes)} boxes, {len(labels)} labels.")
    h, w = entry["orig_hw"]
    xyxy = torch.as_tensor(np.asarray(boxes, dtype=np.float32)) / torch.tensor([w, h, w, h], dtype=torch.float32)
    xyxy = xyxy.clamp(0.0, 1.0)
    cxcywh = torch.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
                          xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], dim=1)
    vision = entry["vision"]
    device, dtype = segmenter.device, segmenter.dtype
    with torch.no_grad():
        out = segmenter.model.geometry_encoder(
            box_embeddings=cxcywh[None].to(device, dtype),
            box_mask=torch.ones(1, len(boxes), dtype=torch.bool, device=device),
            box_labels=torch.as_tensor(list(labels), dtype=torch.long, device=device)[None],
            # as Sam3Model.forward: every FPN level but the last (the 0.5x scale)
            img_feats=vision.fpn_hidden_states[:-1],
            img_pos_embeds=vision.fpn_position_encoding[:-1],
        )
    tokens = out.last_hidden_state[0][out.attention_mask[0].bool()]
    check_finite_output(tokens, "SAM 3 geometry encoder")
    return tokens


def detect(segmenter, entries: Sequence[dict], text: str, tokens: torch.Tensor | None,
           min_score: float = 0.3) -> list[Detections]:
    """SAM 3's instances on each embedded image (``segmenter.features(key)``), in one batched forward.

    text: the concept's name ("" or None: ``BOX_ONLY_TEXT``); tokens: (T, D) exemplar tokens
    from ``encode_boxes``, appended after the text features, or None for text alone.
    """
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    feats, mask = segmenter.text_features(text or BOX_ONLY_TEXT)
    if tokens is not None and len(tokens):
        tokens = tokens.to(feats.device, feats.dtype)[None]
        feats = torch.cat([feats, tokens], dim=1)
        mask = torch.cat([mask, torch.ones(1, tokens.shape[1], dtype=torch.bool, device=mask.device)], dim=1)
    b = len(entries)
    levels = len(entries[0]["vision"].fpn_hidden_states)
    # Every image was resized to the model's square input, so their features stack into a batch.
    vision = Sam3VisionEncoderOutput(
        fpn_hidden_states=tuple(torch.cat([e["vision"].fpn_hidden_states[i] for e in entries]) for i in range(levels)),
        fpn_position_encoding=tuple(torch.cat([e["vision"].fpn_position_encoding[i] for e in entries])
                                    for i in range(levels)),
    )
    with torch.no_grad():
        out = segmenter.model(vision_embeds=vision, text_embeds=BaseModelOutputWithPooling(
            pooler_output=feats.expand(b, -1, -1)), attention_mask=mask.expand(b, -1))
    for name in ("pred_masks", "pred_logits", "presence_logits"):
        check_finite_output(getattr(out, name), "SAM 3 segmenter")
    return [_detections(out, i, e["orig_hw"], min_score) for i, e in enumerate(entries)]


def _detections(out, i: int, size: tuple[int, int], min_score: float) -> Detections:
    presence = float(out.presence_logits[i].float().sigmoid().reshape(()))
    scores = out.pred_logits[i].float().sigmoid() * presence
    kept = scores > min_score
    h, w = size
    order = torch.argsort(scores[kept], descending=True)
    logits = out.pred_masks[i][kept][order].float()
    if len(logits):
        prob = torch.sigmoid(F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0])
        probability = prob.max(dim=0).values.cpu().numpy().astype(np.float32)
        masks = (prob > 0.5).cpu().numpy()
    else:
        probability = np.zeros(size, np.float32)
        masks = np.zeros((0, h, w), bool)
    boxes = out.pred_boxes[i].float().cpu().numpy() * np.array([w, h, w, h], np.float32)
    return Detections(probability=probability, scores=scores.cpu().numpy(), kept=kept.cpu().numpy(),
                      boxes=boxes, masks=masks, presence=presence)
