"""Synthetic memory tasks: the targets are what the inputs say, splits are seeded and disjoint, the
loss and the metrics look only at the recall positions, and the CLI trains and evaluates them."""

import csv
import json
import math

import lightning as L
import numpy as np
import pytest
import torch

from helpers import cli
from hyena_rtf.errors import UserError
from hyena_rtf.training.lit_module import HyenaLMModule
from hyena_rtf.data.synthetic import AssociativeRecallDataModule, CopyingDataModule, associative_recall, copying
from hyena_rtf.evaluation.recall import recall_counts

def tiny_model(vocab: int, l_max: int = 32, mixer: str = "hyena_rtf") -> dict:
    return dict(mixer=mixer, vocab_size=vocab, hidden_size=16, num_hidden_layers=1, intermediate_size=32,
                max_position_embeddings=l_max, state_size=4, output_rank=8, num_attention_heads=2)


# ---------------------------------------------------------------------- targets
@pytest.mark.parametrize("mem_len,delay,vocab", [(5, 0, 8), (7, 3, 12), (1, 2, 3)])
def test_copying_targets_are_the_memorised_block(mem_len, delay, vocab):
    x, y = copying(np.random.default_rng(0), 50, mem_len, delay, vocab)
    assert x.shape == y.shape == (50, 2 * mem_len + delay)
    for row, target in zip(x.tolist(), y.tolist()):
        # Read the task off the input: symbols are neither blank (0) nor marker (vocab - 1).
        block = [t for t in row if t not in (0, vocab - 1)]
        markers = [i for i, t in enumerate(row) if t == vocab - 1]
        assert len(block) == mem_len and len(markers) == mem_len
        assert all(1 <= t <= vocab - 2 for t in block)
        scored = [i for i, t in enumerate(target) if t != -100]
        assert scored == markers
        assert [target[i] for i in markers] == block
        # Everything between the block and the first marker is blank.
        assert row[mem_len : markers[0]] == [0] * delay


@pytest.mark.parametrize("seq_len,pairs,queries,vocab", [(20, 4, 3, 17), (9, 3, 3, 7), (64, 8, 8, 33)])
def test_associative_recall_targets_are_the_queried_values(seq_len, pairs, queries, vocab):
    x, y = associative_recall(np.random.default_rng(1), 40, seq_len, pairs, queries, vocab)
    n_keys = (vocab - 1) // 2
    for row, target in zip(x.tolist(), y.tolist()):
        table, i = {}, 0
        while len(table) < pairs:  # parse "k v k v ..." from the front
            key, value = row[i], row[i + 1]
            assert 1 <= key <= n_keys < value < vocab and key not in table
            table[key] = value
            i += 2
        assert row[i : seq_len - queries] == [0] * (seq_len - queries - i)
        for pos in range(seq_len):
            if pos >= seq_len - queries:
                assert row[pos] in table and target[pos] == table[row[pos]]
            else:
                assert target[pos] == -100


def test_task_arguments_are_checked():
    with pytest.raises(UserError, match="num_pairs"):
        AssociativeRecallDataModule(seq_len=64, num_pairs=9, vocab_size=17)
    with pytest.raises(UserError, match="seq_len"):
        AssociativeRecallDataModule(seq_len=10, num_pairs=4, num_queries=3, vocab_size=17)
    with pytest.raises(UserError, match="mem_len"):
        CopyingDataModule(mem_len=0)
    with pytest.raises(UserError, match="smaller than data.batch_size"):
        CopyingDataModule(train_size=8, batch_size=16)


# ---------------------------------------------------------------------- splits
def _rows(ds) -> list[bytes]:
    return [r.tobytes() for r in ds.inputs.numpy()]


def test_splits_are_deterministic_and_seeded():
    a, b, c = (CopyingDataModule(mem_len=6, vocab_size=10, train_size=64, eval_size=16, seed=s) for s in (3, 3, 4))
    for dm in (a, b, c):
        dm.setup()
    for split in ("train", "validation", "test"):
        assert torch.equal(a.datasets[split].inputs, b.datasets[split].inputs)
        assert torch.equal(a.datasets[split].targets, b.datasets[split].targets)
        assert not torch.equal(a.datasets[split].inputs, c.datasets[split].inputs)
    assert not torch.equal(a.datasets["validation"].inputs, a.datasets["test"].inputs[:16])


def test_eval_splits_never_repeat_a_training_sequence():
    # 3 keys x 3 values x 1 query: only 9 distinct sequences, so collisions are likely to be drawn.
    # Take a seed for which the generator alone draws validation rows that repeat training rows.
    def raw(seed, split, n):
        return {r.tobytes() for r in associative_recall(np.random.default_rng([seed, split]), n, 3, 1, 1, 7)[0]}

    seed = next(s for s in range(100) if raw(s, 1, 3) & raw(s, 0, 4))
    dm = AssociativeRecallDataModule(seq_len=3, num_pairs=1, num_queries=1, vocab_size=7, train_size=4, eval_size=3, batch_size=4, seed=seed)
    dm.setup()
    train, val, test = (set(_rows(dm.datasets[s])) for s in ("train", "validation", "test"))
    assert train == raw(seed, 0, 4)
    assert len(dm.datasets["validation"]) == len(dm.datasets["test"]) == 3
    assert not (train & val) and not (train & test) and not (val & test)

    too_small = AssociativeRecallDataModule(seq_len=3, num_pairs=1, num_queries=1, vocab_size=5, train_size=200, eval_size=2)
    with pytest.raises(UserError, match="too few distinct sequences"):
        too_small.setup()


def test_vocabulary_reaches_the_model_through_the_tokenizer():
    dm = AssociativeRecallDataModule(seq_len=16, num_pairs=4, num_queries=2, vocab_size=21)
    tok = dm.tokenizer
    assert len(tok) == 21
    assert tok.convert_ids_to_tokens([0, 1, 10, 11, 20]) == ["<blank>", "k1", "k10", "v1", "v10"]
    assert tok("k3 v2 <blank>")["input_ids"] == [3, 12, 0]


# ---------------------------------------------------------------------- loss and metrics
def _batch(vocab=10):
    dm = CopyingDataModule(mem_len=5, delay=2, vocab_size=vocab, train_size=8, eval_size=8, batch_size=8)
    dm.setup()
    return dm, {"input_ids": dm.datasets["train"].inputs[:6], "targets": dm.datasets["train"].targets[:6]}


def test_loss_is_the_masked_cross_entropy_by_hand():
    torch.manual_seed(0)
    dm, batch = _batch()
    module = HyenaLMModule(model=tiny_model(dm.vocab_size)).double()
    nll, count = module.nll(batch)
    logits = module(batch["input_ids"]).tolist()
    by_hand, n = 0.0, 0
    for row_logits, row_targets in zip(logits, batch["targets"].tolist()):
        for z, t in zip(row_logits, row_targets):
            if t == -100:
                continue
            by_hand += math.log(sum(math.exp(v) for v in z)) - z[t]
            n += 1
    assert n == int(count) == 6 * 5
    assert float(nll) == pytest.approx(by_hand, rel=1e-6)  # the module sums in fp32


def test_recall_counts_by_hand():
    torch.manual_seed(1)
    targets = torch.tensor([[-100, 2, 3, -100], [-100, -100, 1, 1], [-100, -100, -100, -100], [0, 1, 2, 3]])
    logits = torch.randn(4, 4, 5)
    logits[0, 1, 2] = logits[0, 2, 3] = 9.0  # row 0 all right
    logits[1, 2, 1] = 9.0  # row 1 half right
    logits[1, 3, 4] = 9.0
    correct, exact, seqs = recall_counts(logits, targets)
    pred = logits.argmax(-1).tolist()
    hits = [[p == t for p, t in zip(pr, tr) if t != -100] for pr, tr in zip(pred, targets.tolist())]
    assert int(correct) == sum(sum(h) for h in hits)
    assert int(seqs) == 3  # row 2 has nothing to score
    assert int(exact) == sum(1 for h in hits if h and all(h))
    assert int(exact) >= 1 and int(correct) >= 3


def test_validation_logs_acc_and_exact_of_the_masked_positions(tmp_path):
    torch.manual_seed(0)
    dm = CopyingDataModule(mem_len=4, vocab_size=7, train_size=16, eval_size=20, batch_size=8)
    module = HyenaLMModule(model=tiny_model(7))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.validate(module, datamodule=dm, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # Independent count: an argmax loop over the validation split, one sequence at a time.
    correct = total = exact = 0
    with torch.no_grad():
        for x, y in zip(dm.datasets["validation"].inputs, dm.datasets["validation"].targets):
            pred = module(x[None])[0].argmax(-1)
            ok = [int(pred[i]) == int(y[i]) for i in range(len(y)) if y[i] != -100]
            correct, total, exact = correct + sum(ok), total + len(ok), exact + all(ok)
    assert metrics["val/acc"] == pytest.approx(correct / total)
    assert metrics["val/exact"] == pytest.approx(exact / 20)
    assert "val/word_ppl" not in metrics  # no words in a synthetic task


# ---------------------------------------------------------------------- CLI
def _run(args, tmp_path):
    return cli(args[0], *args[1:], cwd=tmp_path)


@pytest.mark.parametrize("task,overrides", [
    ("copying", ["data.mem_len=6", "data.vocab_size=8"]),
    ("associative_recall", ["data.seq_len=24", "data.num_pairs=4", "data.num_queries=2", "data.vocab_size=17"]),
])
def test_cli_trains_and_evaluates_a_task(task, overrides, tmp_path):
    run_dir = tmp_path / "run"
    data = [f"data={task}", *overrides, "data.train_size=64", "data.eval_size=32", "data.batch_size=8"]
    train = _run(["train.py", *data, "model=hyena_rtf_tiny", "model.num_hidden_layers=1", "trainer.max_steps=6",
                  "trainer.val_check_interval=6", "callbacks=model_checkpoint", "logger=csv", f"paths.output_dir={run_dir}"], tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "val/acc" in train.stdout and "test/exact" in train.stdout
    rows = list(csv.DictReader(open(next(run_dir.rglob("metrics.csv")))))
    val = [r for r in rows if r.get("val/acc")]
    assert val and 0.0 <= float(val[-1]["val/acc"]) <= 1.0 and 0.0 <= float(val[-1]["val/exact"]) <= 1.0
    test_acc = float(next(r["test/acc"] for r in rows if r.get("test/acc")))

    ckpt = run_dir / "checkpoints" / "best.ckpt"  # the checkpoint the trainer's test used
    out = tmp_path / "eval.json"
    ev = _run(["evaluate.py", f"ckpt_path={ckpt}", *data, f"output={out}", "progress=false"], tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "acc (per token)" in ev.stdout and "exact (per sequence)" in ev.stdout
    result = json.loads(out.read_text())
    # Every sequence has the same number of scored positions, so exact sequences cannot outnumber acc.
    assert result["sequences"] == 32 and 0.0 <= result["exact"] <= result["acc"] <= 1.0
    # The same test split scored outside Lightning agrees with the trainer's test/acc.
    assert result["acc"] == pytest.approx(test_acc, abs=1e-6)


def test_cli_refuses_a_copy_longer_than_the_context(tmp_path):
    res = _run(["train.py", "data=copying", "data.mem_len=100", "model=hyena_rtf_tiny", f"paths.output_dir={tmp_path}"], tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: data=copying makes sequences of 2 * data.mem_len + data.delay = 200")
    assert not (tmp_path / "checkpoints").exists()
