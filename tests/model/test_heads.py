"""What fine-tuning needs from a saved crammer folder: every Auto head, the pipelines, Trainer, sentence-transformers,
hidden states and attentions, `problem_type`, `attn_implementation`, gradient checkpointing, BERT's inputs."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch.overrides import TorchFunctionMode
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    pipeline,
)

from crammer.model import (
    CrammedBertForMaskedLM,
    CrammedBertForMultipleChoice,
    CrammedBertForQuestionAnswering,
    CrammedBertForSequenceClassification,
    CrammedBertForTokenClassification,
    CrammedBertModel,
    make_config,
    to_hf_bert,
)
from tests.model.conftest import ORIGINAL

ARCHITECTURES = {"crammed": [], "rotary": ["position_embedding=rotary"], "learned": ["position_embedding=learned"],
                 "original": ORIGINAL}


def encoded(tokenizer, texts=("the river flows north.", "a city in the south of the country.", "it was long.")):
    return tokenizer(list(texts), padding=True, return_tensors="pt")


def labels_for(name: str, batch) -> dict[str, torch.Tensor]:
    ids = batch["input_ids"]
    b, s = ids.shape
    if name == "seq":
        return {"labels": torch.tensor([0, 1, 0])[:b]}
    if name == "token":
        labels = torch.randint(0, 2, (b, s), generator=torch.Generator().manual_seed(0))
        return {"labels": labels.masked_fill(batch["attention_mask"] == 0, -100)}
    if name == "qa":
        return {"start_positions": torch.tensor([1, 2, 1])[:b], "end_positions": torch.tensor([3, 4, 2])[:b]}
    if name == "mlm":
        return {"labels": ids.masked_fill(batch["attention_mask"] == 0, -100)}
    raise AssertionError(name)


@pytest.mark.parametrize("auto, cls, kind", [
    (AutoModelForSequenceClassification, CrammedBertForSequenceClassification, "seq"),
    (AutoModelForTokenClassification, CrammedBertForTokenClassification, "token"),
    (AutoModelForQuestionAnswering, CrammedBertForQuestionAnswering, "qa"),
    (AutoModelForMultipleChoice, CrammedBertForMultipleChoice, "choice"),
    (AutoModelForPreTraining, CrammedBertForMaskedLM, "mlm"),
    (AutoModelForMaskedLM, CrammedBertForMaskedLM, "mlm"),
])
def test_each_auto_head_loads_and_trains_a_step(tiny_folder, tokenizer, auto, cls, kind):
    model = auto.from_pretrained(tiny_folder)
    assert type(model) is cls
    mlm = CrammedBertForMaskedLM.from_pretrained(tiny_folder)
    assert torch.equal(model.bert.layers[1].ffn.up.weight, mlm.bert.layers[1].ffn.up.weight)  # pretrained body
    batch = dict(encoded(tokenizer))
    if kind == "choice":  # 3 questions x 2 choices each
        batch = {k: torch.stack([v, v.roll(1, dims=0)], dim=1) for k, v in batch.items()}
        batch["labels"] = torch.tensor([0, 1, 1])
    else:
        batch.update(labels_for(kind, batch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    loss = model(**batch).loss
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert any(n.startswith("bert.layers.0.") for n in changed) and len(changed) > len(before) // 2


def test_token_classification_pipeline_runs(tiny_folder):
    tagger = pipeline("token-classification", model=str(tiny_folder))
    entities = tagger("the river flows north of the city.")
    assert entities and all({"entity", "score", "word", "start", "end"} <= set(e) for e in entities)
    assert all(e["entity"] in ("LABEL_0", "LABEL_1") and 0 <= e["score"] <= 1 for e in entities)


def test_question_answering_head_extracts_a_span(tiny_folder, tokenizer):
    """Extractive QA as the old `question-answering` pipeline did it (transformers 5.24 no longer ships that
    pipeline): the best start <= end among the context's tokens, mapped back to characters by the offsets."""
    qa = AutoModelForQuestionAnswering.from_pretrained(tiny_folder).eval()
    question, context = "where does the river flow?", "The river flows north of the old city into the sea."
    enc = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0]
    with torch.no_grad():
        out = qa(**enc)
    assert out.start_logits.shape == out.end_logits.shape == enc["input_ids"].shape
    in_context = torch.tensor([s == 1 for s in enc.sequence_ids(0)])
    scores = out.start_logits[0][:, None] + out.end_logits[0][None, :]
    allowed = in_context[:, None] & in_context[None, :] & torch.ones_like(scores, dtype=torch.bool).triu()
    start, end = divmod(int(scores.masked_fill(~allowed, -torch.inf).argmax()), scores.shape[1])
    answer = context[int(offsets[start][0]):int(offsets[end][1])]
    assert answer and answer in context and start <= end


def test_fill_mask_pipeline_runs_on_the_saved_folder(tiny_folder):
    predictions = pipeline("fill-mask", model=str(tiny_folder), top_k=2)("the [MASK] of the river.")
    assert len(predictions) == 2 and all(p["token_str"] for p in predictions)


def test_trainer_fine_tunes_a_sequence_classifier(tiny_folder, tokenizer, tmp_path):
    """Trainer (with gradient accumulation) learns 8 labelled sentences: the evaluation loss falls."""
    texts = ["the river is long.", "a small city.", "the north of the country.", "it was in the south.",
             "the old town has a river.", "many people live there.", "the sea is cold.", "a long history."]
    rows = [{**tokenizer(t), "labels": i % 2} for i, t in enumerate(texts)]
    model = AutoModelForSequenceClassification.from_pretrained(tiny_folder, num_labels=2)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=30, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        learning_rate=2e-3, warmup_steps=0, weight_decay=0.0, report_to=[], save_strategy="no", use_cpu=True,
        logging_steps=10, disable_tqdm=True, seed=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows,
                                   data_collator=transformers.DataCollatorWithPadding(tokenizer))
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < 0.5 * before, (before, after)


def test_sentence_transformer_encodes_the_folder(tiny_folder, tokenizer):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    encoder = sentence_transformers.SentenceTransformer(str(tiny_folder), device="cpu")
    texts = ["the river flows north.", "a city."]
    embeddings = encoder.encode(texts, convert_to_tensor=True)
    assert embeddings.shape == (2, 128)
    model = CrammedBertModel.from_pretrained(tiny_folder).eval()
    batch = encoded(tokenizer, texts)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    torch.testing.assert_close(embeddings, (hidden * mask).sum(1) / mask.sum(1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_hidden_states_and_attentions_have_hugging_face_shapes(arch):
    torch.manual_seed(0)
    config = make_config("tiny", 120, ARCHITECTURES[arch])
    model = CrammedBertForMaskedLM(config).eval()
    ids = torch.randint(5, 120, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    out = model(ids, mask, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert all(h.shape == (2, 9, 128) for h in out.hidden_states)
    assert len(out.attentions) == config.num_hidden_layers
    assert all(a.shape == (2, config.num_attention_heads, 9, 9) for a in out.attentions)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 2, 9))
    assert out.attentions[1][1, :, :, 6:].abs().max() == 0  # padding keys get no weight
    base = model.bert(ids, mask, output_hidden_states=True)
    assert torch.equal(base.hidden_states[-1], base.last_hidden_state) and base.attentions is None
    torch.testing.assert_close(model(ids, mask).logits, out.logits)  # asking for them changes nothing
    assert model(ids, mask).hidden_states is None
    model.config.output_hidden_states = True  # the config's default, as in Hugging Face models
    assert len(model(ids, mask).hidden_states) == config.num_hidden_layers + 1


def test_hidden_states_and_attentions_equal_native_berts(original_folder, tokenizer):
    """The `original` architecture against the same weights in transformers' own BertModel (eager attention)."""
    ours = CrammedBertModel.from_pretrained(original_folder).eval()
    theirs = to_hf_bert(ours)
    theirs.set_attn_implementation("eager")
    batch = encoded(tokenizer)
    with torch.no_grad():
        a = ours(**batch, output_hidden_states=True, output_attentions=True)
        b = theirs(**batch, output_hidden_states=True, output_attentions=True)
    assert len(a.hidden_states) == len(b.hidden_states) and len(a.attentions) == len(b.attentions)
    real = batch["attention_mask"].bool()
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert x.shape == y.shape and (x - y)[real].abs().max() < 1e-5
    for x, y in zip(a.attentions, b.attentions):
        assert x.shape == y.shape and (x - y).abs().max() < 1e-5


class SdpaCalls(TorchFunctionMode):
    """Counts calls of the fused attention kernel (observes, changes nothing)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += func is F.scaled_dot_product_attention
        return func(*args, **(kwargs or {}))


def test_attn_implementation_is_honoured(tiny_folder, tokenizer):
    batch = encoded(tokenizer)
    fused = AutoModel.from_pretrained(tiny_folder).eval()
    eager = AutoModel.from_pretrained(tiny_folder, attn_implementation="eager").eval()
    assert fused.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    with SdpaCalls() as mode:
        expected = fused(**batch).last_hidden_state
    assert mode.calls == 2  # one per layer
    with SdpaCalls() as mode:
        actual = eager(**batch).last_hidden_state
        with_weights = fused(**batch, output_attentions=True)  # weights asked for: written out for this call
    assert mode.calls == 0 and len(with_weights.attentions) == 2
    real = batch["attention_mask"].bool()
    assert (actual - expected)[real].abs().max() < 1e-5
    fused.set_attn_implementation("eager")
    with SdpaCalls() as mode:
        fused(**batch)
    assert mode.calls == 0
    with pytest.raises((ValueError, ImportError)):
        AutoModel.from_pretrained(tiny_folder, attn_implementation="flash_attention_2")


def classifier(num_labels: int, problem_type: str | None = None) -> CrammedBertForSequenceClassification:
    torch.manual_seed(0)
    config = make_config("tiny", 120, ["classifier_dropout=0.0"])
    config.num_labels = num_labels
    config.problem_type = problem_type
    return CrammedBertForSequenceClassification(config).eval()


def test_problem_type_selects_the_loss_as_in_bert():
    ids = torch.randint(5, 120, (4, 7), generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    for problem_type in ("multi_label_classification", None):  # float labels and 3 outputs: multi-label inferred
        model = classifier(3, problem_type)
        out = model(ids, labels=targets)
        torch.testing.assert_close(out.loss, torch.nn.BCEWithLogitsLoss()(out.logits, targets))
        assert model.config.problem_type == problem_type
    model = classifier(3, "regression")
    out = model(ids, labels=targets)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits, targets))
    model = classifier(3)
    classes = torch.tensor([2, 0, 1, 1])
    out = model(ids, labels=classes)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, classes))
    model = classifier(1)
    scores = torch.tensor([0.5, 4.0, 2.5, 1.0])
    out = model(ids, labels=scores)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), scores))


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(reentrant):
    torch.manual_seed(0)
    model = CrammedBertForSequenceClassification(make_config("tiny", 120, ["classifier_dropout=0.0"])).train()
    ids = torch.randint(5, 120, (3, 10), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 1])

    def gradients():
        model.zero_grad()
        model(ids, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = gradients()
    calls = []
    model.bert.layers[0].attention.register_forward_hook(lambda *args: calls.append(1))
    gradients()
    assert len(calls) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the README's call: transformers 5's name, no deprecation
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
        assert model.is_activation_checkpointing
    assert all(layer.gradient_checkpointing for layer in model.bert.layers)
    calls.clear()
    checkpointed = gradients()
    assert len(calls) == 2  # the block ran again in the backward pass: its activations were not kept
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_position_ids_and_inputs_embeds_are_read(arch):
    torch.manual_seed(0)
    model = CrammedBertModel(make_config("tiny", 120, ARCHITECTURES[arch])).eval()
    ids = torch.randint(5, 120, (2, 8))
    reference = model(ids).last_hidden_state
    torch.testing.assert_close(model(inputs_embeds=model.get_input_embeddings()(ids)).last_hidden_state, reference)
    torch.testing.assert_close(model(ids, position_ids=torch.arange(8).expand(2, -1)).last_hidden_state, reference)
    spread = model(ids, position_ids=torch.arange(0, 16, 2).expand(2, -1)).last_hidden_state  # RoPE: offsets matter
    assert (spread - reference).abs().max() > 1e-4
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()


def test_return_dict_follows_the_config():
    model = classifier(2)
    ids = torch.randint(5, 120, (2, 6))
    loss, logits = model(ids, labels=torch.tensor([0, 1]), return_dict=False)
    assert loss.ndim == 0 and logits.shape == (2, 2)
    model.config.return_dict = False
    (logits,) = model(ids)
    assert logits.shape == (2, 2)
    assert model(ids, return_dict=True).logits.shape == (2, 2)
    hidden, pooled = model.bert(ids)
    assert hidden.shape == (2, 6, 128) and pooled.shape == (2, 128)


def test_multiple_choice_scores_each_choice():
    torch.manual_seed(0)
    config = make_config("tiny", 120, ["classifier_dropout=0.0"])
    model = CrammedBertForMultipleChoice(config).eval()
    ids = torch.randint(5, 120, (2, 3, 7))
    out = model(ids, labels=torch.tensor([2, 0]), output_hidden_states=True)
    assert out.logits.shape == (2, 3) and out.hidden_states[0].shape == (6, 7, 128)
    single = model(ids[:, 1:2]).logits  # a choice's score does not depend on the others
    torch.testing.assert_close(single[:, 0], out.logits[:, 1])
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, torch.tensor([2, 0])))


def test_peft_lora_trains_only_its_adapters(tiny_folder, tokenizer):
    peft = pytest.importorskip("peft")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_folder, num_labels=2)
    lora = peft.get_peft_model(model, peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=4,
                                                      target_modules=["qkv", "out", "up", "down"]))
    lora.gradient_checkpointing_enable()
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in lora.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    batch = encoded(tokenizer)
    lora.train()
    for _ in range(2):
        lora(**batch, labels=torch.tensor([0, 1, 0])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, frozen[n]) for n, p in lora.named_parameters() if n in frozen)
    pretrained = frozen["base_model.model.bert.layers.0.attention.qkv.base_layer.weight"]
    merged = lora.merge_and_unload()  # the adapters folded into the weights: a plain crammer classifier again
    assert type(merged) is CrammedBertForSequenceClassification
    assert not torch.equal(merged.bert.layers[0].attention.qkv.weight, pretrained)


def test_every_head_takes_inputs_embeds():
    torch.manual_seed(0)
    config = make_config("tiny", 120, ["classifier_dropout=0.0"])
    ids = torch.randint(5, 120, (2, 3, 7))
    heads = (CrammedBertForSequenceClassification, CrammedBertForTokenClassification, CrammedBertForQuestionAnswering)
    for cls, inputs in [(head, ids[:, 0]) for head in heads] + [(CrammedBertForMultipleChoice, ids)]:
        model = cls(config).eval()
        by_ids = model(inputs).to_tuple()
        by_embeds = model(inputs_embeds=model.get_input_embeddings()(inputs)).to_tuple()
        assert len(by_ids) == len(by_embeds)
        for a, b in zip(by_ids, by_embeds):
            torch.testing.assert_close(a, b)
