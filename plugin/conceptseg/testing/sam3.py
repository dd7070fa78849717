"""A tiny SAM 3 of the real architecture with random weights and a byte-level CLIP tokenizer built here."""

from __future__ import annotations

import os




def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character table (byte-level BPE alphabet)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
          + list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_clip_tokenizer():
    """transformers' real ``CLIPTokenizer`` (byte-level BPE, CLIP's normaliser, pre-tokeniser
    and <|startoftext|>/<|endoftext|> post-processor) over a 514-entry vocabulary with no
    merges: the 256 byte symbols, the same with CLIP's "</w>" word-end suffix, then the two
    special tokens. Every text encodes (one token per byte), offline; CLIP's 49408-entry
    vocabulary is not shipped in any installed package."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    return CLIPTokenizer(vocab=vocab, merges=[])


def build_tiny_sam3(out_dir: str, seed: int = 0, width: int = 256, image_size: int = 112) -> str:
    """Saves a tiny random ``Sam3Model`` and its ``Sam3Processor`` to ``out_dir``.

    The architecture is SAM 3's, shrunk: a 2-layer ViT (width 32, patch 14, windows of 4
    patches, global attention in layer 1, position embeddings tiled from 4x4 like SAM 3's
    24x24) on ``image_size`` px, the four FPN scales (4, 2, 1, 0.5) at ``width``, a 1-layer
    CLIP text encoder (width 32, 32 positions) with ``tiny_clip_tokenizer``, 1-layer fusion
    encoder and DETR decoder (8 queries + the presence token), the mask decoder's pixel decoder
    with its 2 used upsampling stages, and the box (geometry) encoder without layers (it is
    never used here). ``width`` is the prompt/concept-token width; 256 matches the released
    SAM 3 (about 6.4 M parameters; width=128 gives about 1.8 M). Same seed, same weights.
    """
    import torch

    from conceptseg.segmenters.sam3_text import require_sam3

    require_sam3()
    import transformers
    from transformers import Sam3Config, Sam3Model, Sam3Processor

    # the first transformers releases with SAM 3 export only its fast image processor
    Sam3ImageProcessor = getattr(transformers, "Sam3ImageProcessor", None) or transformers.Sam3ImageProcessorFast

    grid = image_size // 14
    scales = [4.0, 2.0, 1.0, 0.5]
    tokenizer = tiny_clip_tokenizer()
    config = Sam3Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam3_vit_model", hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=14,
                window_size=4, global_attn_indexes=[1], pretrain_image_size=56,
            ),
            fpn_hidden_size=width, scale_factors=scales,
            backbone_feature_sizes=[[int(grid * s)] * 2 for s in scales[:-1]],
        ),
        text_config=dict(
            model_type="clip_text_model", vocab_size=len(tokenizer), hidden_size=32,
            intermediate_size=64, projection_dim=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        geometry_encoder_config=dict(hidden_size=width, num_layers=0, intermediate_size=64,
                                     num_attention_heads=2, roi_size=1),
        detr_encoder_config=dict(hidden_size=width, num_layers=1, intermediate_size=64,
                                 num_attention_heads=2),
        detr_decoder_config=dict(hidden_size=width, num_layers=1, intermediate_size=64,
                                 num_attention_heads=2, num_queries=8),
        mask_decoder_config=dict(hidden_size=width, num_upsampling_stages=2, num_attention_heads=2),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam3Model(config).eval()
    processor = Sam3Processor(
        image_processor=Sam3ImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
    )
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
