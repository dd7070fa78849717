"""The concept translation module: shapes, official parameter layout, checkpoint IO, masking, gradients."""

import json

import pytest
import torch

from conceptseg.errors import ConceptSegError
from conceptseg.model.translator import (
    CheckpointError,
    ConceptTranslator,
    TranslatorConfig,
    TranslatorOutput,
    config_from_state,
    load_translator,
    load_translator_state,
    save_translator,
    translator_state_from_checkpoint,
)

H, HEADS, N = 32, 4, 8


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    model = ConceptTranslator(TranslatorConfig(hidden_size=H, num_heads=HEADS, **kw))
    # Non-zero positional embedding so that tests exercise it (it is zero-initialised).
    with torch.no_grad():
        model.connector.pos_embed.normal_(0, 0.02)
    return model.eval()


def _official_keys(num_blocks=4):
    """Hand-written from method.md §1.1a."""
    keys = ["learnable_query.param.weight", "connector.pos_embed"]
    for i in range(num_blocks):
        p = f"connector.blocks.{i}."
        for part in ("norm0", "norm1", "norm2", "attn.q", "attn.kv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            keys += [p + part + ".weight", p + part + ".bias"]
    keys += ["proj_to_sam.0.weight", "proj_to_sam.0.bias", "proj_to_sam.2.weight", "proj_to_sam.2.bias"]
    return keys


def _official_shapes(h, n=8, num_blocks=4, out=256):
    shapes = {"learnable_query.param.weight": (n, h), "connector.pos_embed": (1, n, h)}
    for i in range(num_blocks):
        p = f"connector.blocks.{i}."
        for norm in ("norm0", "norm1", "norm2"):
            shapes[p + norm + ".weight"] = shapes[p + norm + ".bias"] = (h,)
        shapes.update({
            p + "attn.q.weight": (h, h), p + "attn.q.bias": (h,),
            p + "attn.kv.weight": (2 * h, h), p + "attn.kv.bias": (2 * h,),
            p + "attn.proj.weight": (h, h), p + "attn.proj.bias": (h,),
            p + "mlp.fc1.weight": (4 * h, h), p + "mlp.fc1.bias": (4 * h,),
            p + "mlp.fc2.weight": (h, 4 * h), p + "mlp.fc2.bias": (h,),
        })
    shapes.update({"proj_to_sam.0.weight": (h, h), "proj_to_sam.0.bias": (h,),
                   "proj_to_sam.2.weight": (out, h), "proj_to_sam.2.bias": (out,)})
    return shapes


class TestOutputShape:
    @pytest.mark.parametrize("b,t", [(1, 1), (2, 7), (5, 33)])
    def test_tokens_are_batch_by_8_by_256(self, b, t):
        out = _model()(torch.randn(b, t, H), torch.ones(b, t, dtype=torch.bool))
        assert isinstance(out, TranslatorOutput)
        assert out.tokens.shape == (b, N, 256) and out.tokens.dtype == torch.float32
        assert torch.isfinite(out.tokens).all()

    def test_mask_is_optional_and_int_masks_are_accepted(self):
        model, x = _model(), torch.randn(2, 6, H)
        a = model(x).tokens
        b = model(x, torch.ones(2, 6, dtype=torch.long)).tokens
        torch.testing.assert_close(a, b)

    def test_wrong_hidden_size_or_mask_shape_is_refused(self):
        model = _model()
        with pytest.raises(ValueError, match="hidden_states"):
            model(torch.randn(2, 6, H + 1))
        with pytest.raises(ValueError, match="attention_mask"):
            model(torch.randn(2, 6, H), torch.ones(2, 5))


class TestConfig:
    def test_defaults_are_the_official_values(self):
        cfg = TranslatorConfig(hidden_size=3584)
        assert (cfg.num_queries, cfg.num_blocks, cfg.num_heads, cfg.mlp_ratio, cfg.out_dim) == (8, 4, 16, 4, 256)
        assert cfg.norm_eps == 1e-6 and cfg.key_padding_mask is True

    def test_hidden_size_not_divisible_by_heads_names_values_and_fix(self):
        with pytest.raises(ConceptSegError, match=r"hidden_size 30 .*num_heads 4.*choose num_heads"):
            TranslatorConfig(hidden_size=30, num_heads=4)

    @pytest.mark.parametrize("kw", [{"num_queries": 0}, {"out_dim": 2.5}, {"num_blocks": True},
                                    {"norm_eps": 0.0}, {"key_padding_mask": 1}])
    def test_bad_values_are_refused(self, kw):
        with pytest.raises(ConceptSegError, match=next(iter(kw))):
            TranslatorConfig(hidden_size=H, num_heads=HEADS, **kw)

    def test_dict_round_trip_and_unknown_keys(self):
        cfg = TranslatorConfig(hidden_size=H, num_heads=HEADS, key_padding_mask=False)
        assert TranslatorConfig.from_dict(cfg.to_dict()) == cfg
        with pytest.raises(ConceptSegError, match="num_query"):
            TranslatorConfig.from_dict({**cfg.to_dict(), "num_query": 8})


class TestOfficialLayout:
    def test_state_dict_keys_equal_the_official_list(self):
        assert sorted(_model().state_dict()) == sorted(_official_keys())

    def test_shapes_match_the_table(self):
        state = _model().state_dict()
        assert {k: tuple(v.shape) for k, v in state.items()} == _official_shapes(H)

    def test_initialisation(self):
        torch.manual_seed(0)
        model = ConceptTranslator(TranslatorConfig(hidden_size=256, num_heads=HEADS))
        assert torch.count_nonzero(model.connector.pos_embed) == 0
        assert abs(model.learnable_query.param.weight.std().item() - 0.02) < 0.002
        assert model.connector.blocks[0].norm0.eps == 1e-6


class TestAttentionLayout:
    def test_kv_output_is_keys_then_values_split_into_heads(self):
        """One block against a per-head loop written from method.md §1.1a (guards official-weight loading)."""
        model, x, q0 = _model(), torch.randn(1, 5, H), torch.randn(1, N, H)
        block, d = model.connector.blocks[0], H // HEADS
        qn, hn = block.norm0(q0)[0], block.norm1(x)[0]
        kv = hn @ block.attn.kv.weight.T + block.attn.kv.bias
        keys, values, queries = kv[:, :H], kv[:, H:], qn @ block.attn.q.weight.T + block.attn.q.bias
        heads = []
        for i in range(HEADS):
            sl = slice(i * d, (i + 1) * d)
            weights = torch.softmax(queries[:, sl] @ keys[:, sl].T / d**0.5, dim=-1)
            heads.append(weights @ values[:, sl])
        q1 = q0[0] + block.attn.proj(torch.cat(heads, dim=-1))
        f = block.mlp.fc1(block.norm2(q1))
        expected = q1 + block.mlp.fc2(f * torch.sigmoid(1.702 * f))
        torch.testing.assert_close(block(q0, x, None)[0], expected, rtol=1e-5, atol=1e-5)


class TestOfficialCheckpoint:
    def _full_state(self, source):
        state = {k: v.clone() for k, v in source.state_dict().items()}
        state["model.language_model.embed_tokens.weight"] = torch.randn(10, H)
        state["lm_head.weight"] = torch.randn(10, H)
        state["model.visual.blocks.0.attn.qkv.weight"] = torch.randn(3 * H, H)
        return state

    def test_hand_built_official_dict_loads_strictly(self):
        state = {k: torch.randn(s) for k, s in _official_shapes(H).items()}
        state["model.language_model.embed_tokens.weight"] = torch.randn(10, H)
        state["lm_head.weight"] = torch.randn(10, H)
        ctm = translator_state_from_checkpoint(state)
        assert sorted(ctm) == sorted(_official_keys())
        cfg = config_from_state(ctm, num_heads=HEADS)
        assert (cfg.hidden_size, cfg.num_queries, cfg.num_blocks, cfg.mlp_ratio, cfg.out_dim) == (H, 8, 4, 4, 256)
        model = ConceptTranslator(cfg)
        model.load_state_dict(ctm, strict=True)
        kv = state["connector.blocks.3.attn.kv.weight"]
        torch.testing.assert_close(model.connector.blocks[3].attn.kv.weight, kv)

    def test_loaded_module_reproduces_the_source_outputs(self):
        source = _model(seed=1)
        ctm = translator_state_from_checkpoint(self._full_state(source))
        model = ConceptTranslator(config_from_state(ctm, num_heads=HEADS)).eval()
        load_translator_state(model, ctm)
        x, mask = torch.randn(3, 9, H), torch.ones(3, 9, dtype=torch.bool)
        torch.testing.assert_close(model(x, mask).tokens, source(x, mask).tokens, rtol=0, atol=0)

    def test_other_shapes_are_inferred(self):
        source = ConceptTranslator(TranslatorConfig(hidden_size=24, num_heads=2, num_queries=3, num_blocks=2,
                                                    mlp_ratio=2, out_dim=16))
        cfg = config_from_state(source.state_dict(), num_heads=2)
        assert cfg == source.config

    def test_plain_qwen_checkpoint_is_refused(self):
        with pytest.raises(CheckpointError, match="No translator tensors"):
            translator_state_from_checkpoint({"lm_head.weight": torch.zeros(2, 2)})


class TestSaveLoad:
    def test_round_trip_gives_identical_outputs(self, tmp_path):
        model = _model(seed=2, key_padding_mask=False)
        path = tmp_path / "translator.safetensors"
        save_translator(model, path)
        loaded = load_translator(path)
        assert loaded.config == model.config
        x = torch.randn(2, 5, H)
        torch.testing.assert_close(loaded(x).tokens, model(x).tokens, rtol=0, atol=0)

    def test_bf16_weights_stay_bf16(self, tmp_path):
        model = _model().to(torch.bfloat16)
        save_translator(model, tmp_path / "t.safetensors")
        assert load_translator(tmp_path / "t.safetensors").learnable_query.param.weight.dtype == torch.bfloat16

    def test_file_without_config_is_refused(self, tmp_path):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in _model().state_dict().items()}, str(tmp_path / "bare.safetensors"))
        with pytest.raises(CheckpointError, match="config_from_state"):
            load_translator(tmp_path / "bare.safetensors")


class TestStrictKeys:
    def test_missing_and_unexpected_keys_are_named(self):
        state = _model().state_dict()
        del state["connector.blocks.2.mlp.fc1.bias"]
        state["connector.blocks.4.norm0.weight"] = torch.ones(H)
        with pytest.raises(CheckpointError) as err:
            load_translator_state(_model(), state)
        assert "connector.blocks.2.mlp.fc1.bias" in str(err.value)
        assert "connector.blocks.4.norm0.weight" in str(err.value)
        assert "missing" in str(err.value) and "unexpected" in str(err.value)

    def test_shape_mismatch_is_named(self):
        state = _model().state_dict()
        state["proj_to_sam.2.weight"] = torch.zeros(128, H)
        with pytest.raises(CheckpointError, match=r"proj_to_sam\.2\.weight"):
            load_translator_state(_model(), state)

    def test_file_with_a_missing_key_is_refused(self, tmp_path):
        from safetensors.torch import save_file

        model = _model()
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "connector.pos_embed"}
        metadata = {"conceptseg_translator_config": json.dumps(model.config.to_dict())}
        save_file(state, str(tmp_path / "t.safetensors"), metadata=metadata)
        with pytest.raises(CheckpointError, match=r"connector\.pos_embed"):
            load_translator(tmp_path / "t.safetensors")


class TestKeyPaddingMask:
    def _padded(self):
        torch.manual_seed(3)
        short, long = torch.randn(1, 4, H), torch.randn(1, 7, H)
        junk = 50 * torch.randn(1, 3, H)  # post-EOS garbage in the padded slots
        batch = torch.cat([torch.cat([short, junk], dim=1), long])
        mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1] * 7], dtype=torch.bool)
        return short, long, batch, mask

    def test_masked_padding_equals_the_unpadded_sequence(self):
        model = _model()
        short, long, batch, mask = self._padded()
        out = model(batch, mask).tokens
        torch.testing.assert_close(out[0:1], model(short).tokens, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[1:2], model(long).tokens, rtol=1e-5, atol=1e-5)

    def test_mask_off_attends_to_padding_like_the_official_code(self):
        model = _model(key_padding_mask=False)
        short, _, batch, mask = self._padded()
        out = model(batch, mask).tokens
        torch.testing.assert_close(out, model(batch).tokens)
        assert not torch.allclose(out[0:1], model(short).tokens, atol=1e-3)

    def test_fully_masked_row_is_finite_and_attends_unmasked(self):
        model = _model()
        x = torch.randn(2, 5, H)
        mask = torch.tensor([[0] * 5, [1, 1, 0, 0, 0]], dtype=torch.bool)
        out = model(x, mask).tokens
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[0:1], model(x[0:1]).tokens, rtol=1e-5, atol=1e-5)


class TestGradients:
    def test_params_get_gradients_but_hidden_states_do_not(self):
        model = _model().train()
        hidden = torch.randn(2, 6, H, requires_grad=True)
        out = model(hidden, torch.ones(2, 6, dtype=torch.bool)).tokens
        assert out.requires_grad
        out.square().sum().backward()
        assert hidden.grad is None
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


class TestBfloat16:
    def test_bf16_module_on_cpu(self):
        model = _model().to(torch.bfloat16)
        mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
        x = torch.randn(2, 4, H)
        out = model(x, mask).tokens  # fp32 input is cast to the module's dtype
        assert out.dtype == torch.bfloat16 and out.shape == (2, N, 256)
        assert torch.isfinite(out.float()).all()
        torch.testing.assert_close(out.float(), _model()(x, mask).tokens, rtol=0.05, atol=0.05)
