"""Behaviour of the crammed BERT modules: shapes, sparse prediction, padding, every architecture switch."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers import BertForMaskedLM, BertModel

from crammer.model import (
    CrammedBertForMaskedLM,
    CrammedBertForSequenceClassification,
    CrammedBertModel,
    make_config,
)
from crammer.model import modeling_crammed_bert as modeling
from crammer.model.modeling_crammed_bert import rotary_cos_sin, rotary_qkv

VOCAB = 211
HEADS = ("SequenceClassification", "TokenClassification", "QuestionAnswering", "MultipleChoice")

ARCHITECTURES = {
    "crammed": [],
    "learned": ["position_embedding=learned"],
    "rotary": ["position_embedding=rotary"],
    "original": ["norm_scheme=post", "use_bias=true", "ffn_type=mlp", "position_embedding=learned",
                 "type_vocab_size=2", "mlm_head_transform=true"],
}


def tiny(*overrides: str, seed: int = 0):
    torch.manual_seed(seed)
    return make_config("tiny", VOCAB, list(overrides))


def batch(b=3, s=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, VOCAB, (b, s), generator=g)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shapes_and_dtypes(arch):
    model = CrammedBertForMaskedLM(tiny(*ARCHITECTURES[arch])).eval()
    ids = batch()
    out = model(ids)
    assert out.logits.shape == (3, 12, VOCAB) and out.logits.dtype == torch.float32 and out.loss is None
    positions = torch.tensor([[0, 3], [1, 2], [5, 11]])
    sparse = model(ids, labels=ids, masked_positions=positions)
    assert sparse.logits.shape == (3, 2, VOCAB) and sparse.loss.shape == () and sparse.loss.dtype == torch.float32
    hidden = model.bert(ids).last_hidden_state
    assert hidden.shape == (3, 12, 128)
    loss, logits = model(ids, labels=ids, return_dict=False)
    assert logits.shape == (3, 12, VOCAB) and loss.ndim == 0


def test_forward_takes_hugging_face_berts_positional_order():
    """input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds (and a head's labels) as in BERT."""
    model = CrammedBertForMaskedLM(tiny(*ARCHITECTURES["original"])).eval()  # token types change the output
    ids = batch()
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    types = torch.ones_like(ids)
    out = model(ids, mask, types)
    assert out.loss is None
    torch.testing.assert_close(out.logits, model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits)
    positions = torch.arange(12).expand(3, -1)
    torch.testing.assert_close(model(ids, mask, types, positions).logits, out.logits)
    pairs = [(CrammedBertModel, BertModel), (CrammedBertForMaskedLM, BertForMaskedLM)]
    pairs += [(getattr(modeling, f"CrammedBertFor{head}"), getattr(transformers, f"BertFor{head}"))
              for head in HEADS]
    for ours, theirs in pairs:
        params = list(inspect.signature(ours.forward).parameters.values())[1:]  # without self
        positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        their_names = list(inspect.signature(theirs.forward).parameters)[1:]
        assert positional == their_names[:len(positional)] and len(positional) >= 5, ours
        assert params[-1].kind is params[-1].VAR_KEYWORD  # **kwargs, as in Hugging Face models
    with pytest.raises(TypeError):  # BertForMaskedLM's 6th is encoder_hidden_states: labels are keyword-only
        model(ids, mask, types, positions, None, ids)


def test_bfloat16_model_runs_and_loss_is_float32():
    model = CrammedBertForMaskedLM(tiny()).to(torch.bfloat16)
    ids = batch()
    out = model(ids, labels=ids, masked_positions=torch.tensor([[1], [2], [3]]))
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def test_residual_stream_stays_in_the_autocast_dtype():
    """Under autocast the blocks pass bf16 between them (half the bytes), and the result stays close to fp32."""
    model = CrammedBertForMaskedLM(tiny()).eval()
    ids = batch()
    seen = []
    model.bert.layers[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.bert.encode(ids)
    assert seen == [torch.bfloat16] and low.dtype == torch.bfloat16
    full = model.bert.encode(ids)
    assert full.dtype == torch.float32 and seen[1:] == [torch.float32]
    assert (low.float() - full).norm() / full.norm() < 2e-2


@pytest.mark.parametrize("bias", [False, True])
def test_glu_uses_value_then_gate_halves_of_one_weight(bias):
    """The split products must compute act(x W_gate) * (x W_value) with W = [W_value; W_gate], as stored."""
    ffn = CrammedBertForMaskedLM(tiny(f"use_bias={bias}")).bert.layers[0].ffn
    if bias:
        torch.nn.init.normal_(ffn.up.bias)
        torch.nn.init.normal_(ffn.down.bias)
    x = torch.randn(4, 128)
    value, gate = F.linear(x, ffn.up.weight, ffn.up.bias).chunk(2, dim=-1)
    expected = F.linear(F.gelu(gate) * value, ffn.down.weight, ffn.down.bias)
    torch.testing.assert_close(ffn(x), expected)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sparse_loss_equals_dense_loss_on_masked_positions(arch):
    model = CrammedBertForMaskedLM(tiny(*ARCHITECTURES[arch])).eval()
    ids = batch()
    positions = torch.tensor([[0, 4, 7], [2, 3, 9], [1, 10, 11]])
    labels = torch.full_like(ids, -100)
    labels.scatter_(1, positions, ids.gather(1, positions))
    dense = model(ids, labels=labels)
    sparse = model(ids, labels=labels, masked_positions=positions)
    torch.testing.assert_close(sparse.loss, dense.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sparse.logits, dense.logits.gather(1, positions[..., None].expand(-1, -1, VOCAB)))
    # A padded slot in masked_positions pointing at a -100 label is ignored.
    padded = torch.cat([positions, torch.tensor([[5], [5], [5]])], dim=1)
    torch.testing.assert_close(model(ids, labels=labels, masked_positions=padded).loss, dense.loss)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_padding_does_not_change_unpadded_outputs(arch):
    model = CrammedBertModel(tiny(*ARCHITECTURES[arch])).eval()
    short = batch(1, 7)
    padded = torch.cat([short, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1).long()
    reference = model(short).last_hidden_state
    out = model(padded, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out[:, :7], reference, rtol=1e-5, atol=1e-5)
    unmasked = model(padded).last_hidden_state  # without the mask the padding leaks into real tokens
    assert (unmasked[:, :7] - reference).abs().max() > 1e-3


def test_positions_matter_for_every_position_encoding():
    ids = batch(1, 10)
    shuffled = ids[:, torch.randperm(10, generator=torch.Generator().manual_seed(0))]
    for arch in ("crammed", "learned", "rotary"):
        model = CrammedBertModel(tiny(*ARCHITECTURES[arch])).eval()
        a = model(ids).last_hidden_state.sort(dim=1).values
        b = model(shuffled).last_hidden_state.sort(dim=1).values
        assert (a - b).abs().max() > 1e-3, arch


def test_rotary_scores_depend_only_on_relative_offset():
    cos, sin = rotary_cos_sin(20, 8, torch.device("cpu"))
    q, k, v = torch.randn(3, 8)
    qs, ks, _ = rotary_qkv(torch.stack((q, k, v)).expand(1, 20, 1, 3, 8).transpose(2, 3).contiguous(), cos, sin)
    qs, ks = qs[0, 0], ks[0, 0]  # (S, head_dim)
    torch.testing.assert_close(qs[3] @ ks[1], qs[15] @ ks[13], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(qs.norm(dim=-1), q.norm().expand(20))


@pytest.mark.parametrize("position_ids", [False, True])
def test_rotary_eager_backward_equals_autograd_of_the_plain_expression(position_ids):
    """The hand-written float32 backward (CPU pretraining) against autograd through the expression that
    torch.compile uses, values and gradients, with and without per-row positions."""
    batch, seq_len, heads, head_dim = 2, 6, 3, 8
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]]) if position_ids else None
    cos, sin = rotary_cos_sin(seq_len, head_dim, torch.device("cpu"), positions, theta=500.0)
    qkv = torch.randn(batch, seq_len, 3, heads, head_dim, dtype=torch.float64)
    weights = [torch.randn(batch, heads, seq_len, head_dim, dtype=torch.float64) for _ in range(3)]
    fast = qkv.float().requires_grad_()
    outputs = rotary_qkv(fast, cos, sin)
    sum((o * w.float()).sum() for o, w in zip(outputs, weights)).backward()
    plain = qkv.requires_grad_()
    half = head_dim // 2
    x1, x2 = plain[:, :, :2, :, :half], plain[:, :, :2, :, half:]
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).permute(2, 0, 3, 1, 4)
    expected = (rotated[0], rotated[1], plain[:, :, 2].transpose(1, 2))
    sum((o * w).sum() for o, w in zip(expected, weights)).backward()
    for got, want in zip(outputs, expected):
        torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.grad, plain.grad.float(), rtol=1e-5, atol=1e-6)
    assert outputs[0].shape == (batch, heads, seq_len, head_dim)


def test_module_structure_follows_the_switches():
    crammed = CrammedBertForMaskedLM(tiny())
    assert all(m.bias is None for m in crammed.modules() if isinstance(m, torch.nn.Linear))
    layer = crammed.bert.layers[0]
    assert layer.ffn.up.out_features == 512 and layer.ffn.down.in_features == 256  # GLU halves the width
    assert isinstance(crammed.bert.final_norm, torch.nn.LayerNorm)
    assert isinstance(crammed.head_transform, torch.nn.Identity)
    assert crammed.bert.embeddings.token_type_embeddings is None
    assert crammed.bert.embeddings.position_embeddings.scale.numel() == 1
    original = CrammedBertForMaskedLM(tiny(*ARCHITECTURES["original"]))
    assert all(m.bias is not None for m in original.modules() if isinstance(m, torch.nn.Linear))
    assert original.bert.layers[0].ffn.down.in_features == 512
    assert isinstance(original.bert.final_norm, torch.nn.Identity)
    assert original.bert.embeddings.token_type_embeddings.num_embeddings == 2
    assert original.bert.embeddings.position_embeddings.weight.shape == (128, 128)
    assert original.head_transform.dense.out_features == 128
    rotary = CrammedBertModel(tiny("position_embedding=rotary"))
    assert rotary.embeddings.position_embeddings is None


def test_post_norm_normalises_each_block_output():
    model = CrammedBertModel(tiny("norm_scheme=post")).eval()
    hidden = model(batch()).last_hidden_state
    torch.testing.assert_close(hidden.mean(-1), torch.zeros(3, 12), atol=1e-5, rtol=0)
    pre = CrammedBertModel(tiny()).eval()
    x = pre.encode(batch())
    assert x.mean(-1).abs().max() > 1e-3  # the residual stream is not normalised before final_norm


def test_init_is_normal_0_02_and_configurable():
    model = CrammedBertForMaskedLM(make_config("small", 5000))
    weight = model.bert.layers[0].attention.qkv.weight
    assert abs(weight.std().item() - 0.02) < 1e-3 and abs(weight.mean().item()) < 1e-3
    assert abs(model.bert.embeddings.word_embeddings.weight.std().item() - 0.02) < 1e-3
    assert torch.equal(model.bert.layers[0].attn_norm.weight, torch.ones(256))
    torch.testing.assert_close(model.bert.embeddings.position_embeddings.scale, torch.tensor([256**-0.5]))
    wide = CrammedBertForMaskedLM(make_config("small", 5000, ["initializer_range=0.05"]))
    assert abs(wide.bert.layers[0].attention.qkv.weight.std().item() - 0.05) < 2e-3


def test_token_types_are_used_when_configured():
    model = CrammedBertModel(tiny("type_vocab_size=2")).eval()
    ids = batch()
    zeros = model(ids, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    torch.testing.assert_close(model(ids).last_hidden_state, zeros)
    assert (model(ids, token_type_ids=torch.ones_like(ids)).last_hidden_state - zeros).abs().max() > 1e-3


def test_dropout_only_in_training_mode():
    model = CrammedBertForMaskedLM(tiny("hidden_dropout_prob=0.2", "attention_probs_dropout_prob=0.2"))
    ids = batch()
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)
    no_dropout = CrammedBertForMaskedLM(tiny()).train()
    assert torch.equal(no_dropout(ids).logits, no_dropout(ids).logits)


def test_activation_and_eps_are_read():
    ids = batch()
    gelu = CrammedBertModel(tiny(seed=3)).eval()(ids).last_hidden_state
    relu = CrammedBertModel(tiny("hidden_act=relu", seed=3)).eval()(ids).last_hidden_state
    eps = CrammedBertModel(tiny("layer_norm_eps=10.0", seed=3)).eval()(ids).last_hidden_state
    assert (gelu - relu).abs().max() > 1e-4 and (gelu - eps).abs().max() > 1e-2


def test_too_long_input_is_a_clear_error():
    model = CrammedBertModel(tiny("max_position_embeddings=8"))
    with pytest.raises(ValueError, match="sequence length 12 exceeds max_position_embeddings=8"):
        model(batch())


def test_sequence_classification_losses():
    ids, mask = batch(), torch.ones(3, 12, dtype=torch.long)
    config = tiny("classifier_dropout=0.0")
    config.num_labels = 3
    model = CrammedBertForSequenceClassification(config).eval()
    labels = torch.tensor([0, 2, 1])
    out = model(ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (3, 3)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    config = tiny("classifier_dropout=0.0")
    config.num_labels = 1
    regression = CrammedBertForSequenceClassification(config).eval()
    scores = torch.tensor([0.5, 4.0, 2.5])
    out = regression(ids, labels=scores)
    assert out.logits.shape == (3, 1)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), scores))


def test_classifier_pooler_and_dropout_are_read():
    config = tiny("classifier_pooler=first_token")
    model = CrammedBertForSequenceClassification(config).eval()
    assert model.bert.pooler.dense is None
    hidden = model.bert(batch()).last_hidden_state
    torch.testing.assert_close(model(batch()).logits, model.classifier(hidden[:, 0]))
    dense = CrammedBertForSequenceClassification(tiny()).eval()
    hidden = dense.bert(batch()).last_hidden_state
    expected = dense.classifier(torch.tanh(dense.bert.pooler.dense(hidden[:, 0])))
    torch.testing.assert_close(dense(batch()).logits, expected)
    dense.train()
    assert dense.dropout.p == 0.1 and not torch.equal(dense(batch()).logits, dense(batch()).logits)


def test_backward_reaches_every_parameter():
    model = CrammedBertForMaskedLM(tiny())
    ids = batch()
    model(ids, labels=ids, masked_positions=torch.tensor([[1, 2], [3, 4], [5, 6]])).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.slow
def test_torch_compile_forward_backward_on_cpu():
    model = CrammedBertForMaskedLM(tiny())
    compiled = torch.compile(model)
    ids = batch()
    positions = torch.tensor([[1, 2], [3, 4], [5, 6]])
    out = compiled(ids, labels=ids, masked_positions=positions)
    out.loss.backward()
    eager = model(ids, labels=ids, masked_positions=positions)
    torch.testing.assert_close(out.loss, eager.loss, rtol=1e-4, atol=1e-5)
    assert model.bert.embeddings.word_embeddings.weight.grad is not None


def test_rotary_model_compiles_in_one_graph_with_the_eager_gradients():
    """Under torch.compile the rotation is the plain expression (the hand-written backward is for eager float32):
    one graph, and the loss and every gradient agree with the eager model's."""
    model = CrammedBertForMaskedLM(tiny("position_embedding=rotary"))
    ids = batch()
    positions = torch.tensor([[1, 2], [3, 4], [5, 6]])
    eager_loss = model(ids, labels=ids, masked_positions=positions).loss
    eager_loss.backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss = compiled(ids, labels=ids, masked_positions=positions).loss
    loss.backward()
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)
