"""The Hugging Face Trainer callback (grafs.integrations.hf_trainer.GrafsTrainerCallback): a
tiny BERT built from its config (no download) searched inside trainer.train(), the formula
registered by name so that config.hidden_act = name trains a model with it."""
import pytest
import torch
from torch import nn

pytest.importorskip("transformers", reason="needs the hf extra: pip install grafs[hf]")
pytest.importorskip("accelerate", reason="needs the hf extra: pip install grafs[hf]")

import grafs  # noqa: E402
from grafs.errors import GrafsError  # noqa: E402
from grafs.integrations.hf_trainer import GrafsTrainerCallback  # noqa: E402
from grafs.runtime.space import SearchSpace  # noqa: E402
from grafs.searching.sites import SearchSite  # noqa: E402
from tests.test_examples import load  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::grafs.errors.GrafsWarning"),   # tiny searches
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

SPACE = dict(template="B(U(x), U(x))", unary=["relu", "gelu", "tanh", "mul_gamma"],
             binary=["add", "max", "mix"])


#: random token sequences labelled by whether token 3 occurs (dict items), from the example
Tokens = load("hf_trainer_search").Tokens


def config(**kw):
    from transformers import BertConfig
    return BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=32, **kw)


def test_search_inside_trainer_train_registers_the_formula_by_name(tmp_path):
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments
    torch.manual_seed(0)
    model = BertForSequenceClassification(config())
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=8,
                             per_device_eval_batch_size=8, gradient_accumulation_steps=2,
                             learning_rate=1e-3, report_to="none", save_strategy="no",
                             eval_strategy="steps", eval_steps=6, logging_steps=3, use_cpu=True,
                             disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(96, 0),
                      eval_dataset=Tokens(32, 1))
    cb = GrafsTrainerCallback("grafs_test_found", search_epochs=4, backend="eager",
                              space=SearchSpace(**SPACE), arch_lr=3e-2).attach(trainer)
    try:
        trainer.train()
        sites = [m for m in model.modules() if isinstance(m, SearchSite)]
        assert len(sites) == 2                                   # each layer's hidden_act module
        assert isinstance(model.bert.pooler.activation, nn.Tanh)  # not what hidden_act names
        cell = cb.searcher.cell
        assert cell.is_discrete() and cb.result.history["epochs"] == [0, 1, 2, 3]
        assert any(h != cb.result.history["alpha"][0] for h in cb.result.history["alpha"][1:])
        in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
        assert not in_opt & {id(p) for p in cell.arch_parameters()}
        assert cb.act_key == "hidden_act" and cb.result.settings["gradient_accumulation_steps"] == 2
        # 4 phases of 3 steps; evaluations after steps 6 and 12 close phases 1 and 3
        assert [v is not None for v in cb.result.history["val_loss"]] == [False, True, False, True]
        assert grafs.registered()["grafs_test_found"] == cb.result.formula

        # the final model, configured by name
        fresh = BertForSequenceClassification(cb.use_in(config()))
        act = fresh.bert.encoder.layer[0].intermediate.intermediate_act_fn
        assert type(act).grafs_name == "grafs_test_found"
        x = torch.linspace(-3, 3, 13)
        torch.testing.assert_close(act(x), grafs.compile(cb.result.formula, backend="eager")(x))
        batch = {k: torch.stack([Tokens(8, 2)[i][k] for i in range(8)]) for k in ("input_ids", "labels")}
        fresh(**batch).loss.backward()
    finally:
        if "grafs_test_found" in grafs.registered():
            grafs.unregister("grafs_test_found")


def test_without_eval_data_the_error_says_what_to_pass(tmp_path):
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments
    model = BertForSequenceClassification(config())
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, report_to="none",
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    cb = GrafsTrainerCallback(search_epochs=2, space=SearchSpace(**SPACE))
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(16, 0), callbacks=[cb])
    with pytest.raises(GrafsError, match="attach"):
        trainer.train()


def test_a_name_transformers_has_is_refused_before_training():
    """GrafsTrainerCallback("gelu") trained to the end and then failed to register the name."""
    with pytest.raises(GrafsError, match="transformers already has an activation 'gelu'"):
        GrafsTrainerCallback("gelu", search_epochs=2)
    with pytest.raises(GrafsError, match="is not accepted"):
        GrafsTrainerCallback("not a name", search_epochs=2)


def test_hf_trainer_example_runs():
    r = load("hf_trainer_search").main(["--tiny"])
    grafs.parse(r.formula)
    assert "grafs_hf_found" not in grafs.registered()      # the example cleans up after itself


def test_the_same_callback_in_a_second_train_searches_the_new_model(tmp_path):
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8,
                             per_device_eval_batch_size=8, report_to="none", save_strategy="no",
                             use_cpu=True, disable_tqdm=True, seed=0)
    cb = GrafsTrainerCallback("grafs_test_again", search_epochs=2, backend="eager",
                              space=SearchSpace(**SPACE))
    try:
        models = []
        for _ in range(2):
            torch.manual_seed(0)
            models.append(BertForSequenceClassification(config()))
            trainer = Trainer(model=models[-1], args=args, train_dataset=Tokens(32, 0),
                              eval_dataset=Tokens(16, 1))
            cb.attach(trainer)
            trainer.train()
            assert cb.searcher.model is models[-1]
            assert sum(isinstance(m, SearchSite) for m in models[-1].modules()) == 2
            assert cb.result.history["epochs"] == [0, 1]
            assert grafs.registered()["grafs_test_again"] == cb.result.formula
        with pytest.raises(GrafsError, match="already searched"):
            trainer.train()
    finally:
        if "grafs_test_again" in grafs.registered():
            grafs.unregister("grafs_test_again")


def test_a_resumed_train_starts_the_search_anew_over_its_remaining_steps(tmp_path):
    """The search is not in the Trainer's checkpoints: a train() resumed at step 4 of 8 runs
    the whole search (warm start, every drop, a discrete cell) over its 4 steps."""
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments

    def run(resume=None):
        torch.manual_seed(0)
        model = BertForSequenceClassification(config())
        args = TrainingArguments(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=8,
                                 per_device_eval_batch_size=8, report_to="none",
                                 save_strategy="steps", save_steps=4, use_cpu=True,
                                 disable_tqdm=True, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=Tokens(64, 0),
                          eval_dataset=Tokens(16, 1))
        cb = GrafsTrainerCallback("grafs_test_resumed", search_epochs=2, backend="eager",
                                  space=SearchSpace(**SPACE)).attach(trainer)
        trainer.train(resume_from_checkpoint=resume)
        return cb
    try:
        run()
        cb = run(str(tmp_path / "checkpoint-4"))
        assert cb.result.history["epochs"] == [0, 1]
        assert cb.searcher.cell.is_discrete()
        assert cb.result.settings["max_steps"] == 4
    finally:
        if "grafs_test_resumed" in grafs.registered():
            grafs.unregister("grafs_test_resumed")


def test_save_model_after_a_search_writes_one_copy_of_the_shared_cell(tmp_path):
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments
    from safetensors.torch import load_file
    torch.manual_seed(0)
    model = BertForSequenceClassification(config())
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8,
                             per_device_eval_batch_size=8, report_to="none", save_strategy="no",
                             use_cpu=True, disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(32, 0), eval_dataset=Tokens(16, 1))
    cb = GrafsTrainerCallback("grafs_test_saved", search_epochs=2, backend="eager",
                              space=SearchSpace(**SPACE)).attach(trainer)
    try:
        trainer.train()
        trainer.save_model(str(tmp_path / "final"))       # safetensors refused the shared cell
        saved = load_file(str(tmp_path / "final" / "model.safetensors"))
        cells = [k for k in saved if ".cell.gamma" in k]
        assert cells == ["bert.encoder.layer.0.intermediate.intermediate_act_fn.cell.gamma"]
        torch.testing.assert_close(saved[cells[0]], cb.searcher.cell.gamma.detach())
        assert "bert.encoder.layer.1.output.dense.weight" in saved
    finally:
        if "grafs_test_saved" in grafs.registered():
            grafs.unregister("grafs_test_saved")
