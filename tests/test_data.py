"""Data: PTB counts and checksums, download, text-file filtering and errors, bucketed DDP batches, tokenizers."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import io
import itertools
import json
import random
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoTokenizer

from conftest import PTB_DIR, REPO, synthetic_sentences
from textvae.config import DataConfig, load_config
from textvae.data import (PTB_MD5, SPLITS, BucketBatchSampler, check_text_file, load_corpus, make_loader,
                          padding_share, ptb_files, utf8_lines)
from textvae.errors import UserError
from textvae.tokenizer import (BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK, UNK_ID, decode_ids, encode_batch,
                               frame, load_tokenizer, save_tokenizer, train_tokenizer)

UNREACHABLE_URL = "http://127.0.0.1:1/simple-examples.tgz"
PTB_NAMES = [f"ptb.{split}.txt" for split in SPLITS]


def ptb_lines(split: str) -> list[str]:
    return [line for line in (PTB_DIR / f"ptb.{split}.txt").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def ptb():
    """PTB read and tokenised with the default word tokenizer: (corpus, tokenizer)."""
    config = load_config(None, {"data": {"root": str(PTB_DIR), "download_url": UNREACHABLE_URL}})
    return load_corpus(config.data)


def test_ptb_split_sizes(ptb):
    corpus, _ = ptb
    assert {split: len(corpus[split].ids) for split in SPLITS} == {"train": 42068, "valid": 3370, "test": 3761}
    assert all(corpus[split].skipped_empty == 0 and corpus[split].truncated == 0 for split in SPLITS)


def test_ptb_word_vocabulary_is_the_standard_ten_thousand(ptb):
    _, tokenizer = ptb
    train_types = {word for line in ptb_lines("train") for word in line.split()}
    assert len(train_types) == 9999
    assert UNK in train_types
    assert tokenizer.get_vocab_size() == 10002
    assert set(tokenizer.get_vocab()) == train_types | set(SPECIAL_TOKENS)
    assert [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS] == [PAD_ID, UNK_ID, BOS_ID, EOS_ID]


def test_ptb_test_ids_are_framed_and_unk_only_where_the_text_says_unk(ptb):
    corpus, tokenizer = ptb
    vocab_size = tokenizer.get_vocab_size()
    for line, ids in zip(ptb_lines("test"), corpus["test"].ids, strict=True):
        words = line.split()
        assert ids[0] == BOS_ID and ids[-1] == EOS_ID
        assert len(ids) == len(words) + 2
        assert all(0 <= token < vocab_size for token in ids)
        assert [token == UNK_ID for token in ids[1:-1]] == [word == UNK for word in words]


def test_ptb_test_has_82430_target_tokens(ptb):
    corpus, _ = ptb
    words = sum(len(line.split()) for line in ptb_lines("test"))
    targets = sum(len(ids) - 1 for ids in corpus["test"].ids)
    assert words == 78669
    assert targets == 82430 == words + 3761


def test_bucketed_ptb_batches_pad_little(ptb):
    corpus, _ = ptb
    bucketed = padding_share(make_loader(corpus["train"].ids, 64, shuffle=True, seed=0, pool=100))
    unbucketed = padding_share(make_loader(corpus["train"].ids, 64, shuffle=True, seed=0, pool=1))
    assert bucketed <= 0.03
    assert unbucketed > 0.2
    assert unbucketed > 5 * bucketed


def copy_ptb(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in PTB_NAMES:
        shutil.copyfile(PTB_DIR / name, root / name)
    return root


def test_verified_ptb_files_are_returned_without_downloading(tmp_path):
    root = copy_ptb(tmp_path / "ptb")
    assert ptb_files(root, UNREACHABLE_URL) == {split: root / f"ptb.{split}.txt" for split in SPLITS}


@pytest.mark.parametrize("split", SPLITS)
def test_checksum_mismatch_names_the_file(tmp_path, split):
    root = copy_ptb(tmp_path / "ptb")
    path = root / f"ptb.{split}.txt"
    data = bytearray(path.read_bytes())
    data[1000] = ord("#")
    path.write_bytes(bytes(data))
    with pytest.raises(UserError) as error:
        ptb_files(root, UNREACHABLE_URL)
    message = str(error.value)
    assert str(path) in message
    assert PTB_MD5[split] in message
    assert "\n" not in message


def test_one_missing_ptb_file_is_named(tmp_path):
    root = copy_ptb(tmp_path / "ptb")
    (root / "ptb.valid.txt").unlink()
    with pytest.raises(UserError, match="ptb.valid.txt is missing"):
        ptb_files(root, UNREACHABLE_URL)


def test_offline_without_ptb_says_where_to_put_the_files(tmp_path):
    root = tmp_path / "data" / "ptb"
    with pytest.raises(UserError) as error:
        ptb_files(root, UNREACHABLE_URL)
    message = str(error.value)
    assert "\n" not in message
    assert UNREACHABLE_URL in message
    assert f"put ptb.train.txt, ptb.valid.txt and ptb.test.txt in {root}" in message
    assert list(root.iterdir()) == []


def build_archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"simple-examples/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def real_archive() -> bytes:
    """simple-examples.tgz as Mikolov ships it (the three PTB files under simple-examples/data/)."""
    return build_archive({name: (PTB_DIR / name).read_bytes() for name in PTB_NAMES})


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def serve(tmp_path):
    """Serve files from a temporary directory on 127.0.0.1; returns publish(name, bytes) -> URL."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def publish(name: str, data: bytes) -> str:
        (served / name).write_bytes(data)
        return f"http://127.0.0.1:{server.server_address[1]}/{name}"

    yield publish
    server.shutdown()
    server.server_close()
    thread.join()


def test_download_places_the_verified_files_and_no_temporary_ones(tmp_path, serve, real_archive):
    url = serve("simple-examples.tgz", real_archive)
    root = tmp_path / "data" / "ptb"
    paths = ptb_files(root, url)
    assert sorted(path.name for path in root.iterdir()) == sorted(PTB_NAMES)
    for split, path in paths.items():
        assert path.read_bytes() == (PTB_DIR / f"ptb.{split}.txt").read_bytes()
    assert ptb_files(root, UNREACHABLE_URL) == paths


@pytest.fixture(scope="module")
def corrupted_archives(real_archive) -> dict[str, bytes]:
    files = {name: (PTB_DIR / name).read_bytes() for name in PTB_NAMES}
    return {
        "wrong-contents": build_archive({**files, "ptb.test.txt": files["ptb.test.txt"].replace(b"the", b"teh", 1)}),
        "missing-member": build_archive({name: files[name] for name in PTB_NAMES[:2]}),
        "truncated": real_archive[: len(real_archive) // 2],
        "not-an-archive": b"<html><body>Moved</body></html>\n",
    }


@pytest.mark.parametrize("kind, reason", [
    ("wrong-contents", "ptb.test.txt has MD5"),
    ("missing-member", "has no ptb.test.txt"),
    ("truncated", "not a valid archive"),
    ("not-an-archive", "not a valid archive"),
])
def test_corrupted_download_leaves_nothing_in_root(tmp_path, serve, corrupted_archives, kind, reason):
    url = serve("simple-examples.tgz", corrupted_archives[kind])
    root = tmp_path / "ptb"
    with pytest.raises(UserError) as error:
        ptb_files(root, url)
    message = str(error.value)
    assert reason in message
    assert "\n" not in message
    assert list(root.iterdir()) == []


def text_config(tmp_path: Path, train: str | bytes, valid: str | bytes = "a b\n", test: str | bytes = "b c\n",
                **data):
    """A DataConfig for dataset=text over three files written with the given contents."""
    paths = {}
    for split, content in (("train", train), ("valid", valid), ("test", test)):
        paths[f"{split}_file"] = str(tmp_path / f"{split}.txt")
        Path(paths[f"{split}_file"]).write_bytes(content.encode() if isinstance(content, str) else content)
    return load_config(None, {"data": {"dataset": "text", **paths, **data}}).data


def test_empty_lines_are_skipped_and_counted(tmp_path):
    corpus, _ = load_corpus(text_config(tmp_path, "a b c\n\n   \nd e\n\n", valid="\na b\n\nc\n"))
    assert len(corpus["train"].ids) == 2
    assert corpus["train"].skipped_empty == 3
    assert len(corpus["valid"].ids) == 2
    assert corpus["valid"].skipped_empty == 2
    assert corpus["test"].skipped_empty == 0


def test_long_training_lines_are_truncated_and_counted_but_not_evaluation_lines(tmp_path):
    long_line = " ".join(f"w{index}" for index in range(10))
    config = text_config(tmp_path, f"{long_line}\nw1 w2\nw1 w2 w3 w4 w5\n", valid=f"{long_line}\n",
                         test=f"w1 w2\n{long_line}\n", max_length=4)
    corpus, _ = load_corpus(config)
    assert corpus["train"].truncated == 2
    assert corpus["train"].lengths.tolist() == [6, 4, 6]
    assert all(ids[-1] == EOS_ID for ids in corpus["train"].ids)
    assert corpus["valid"].lengths.tolist() == [12]
    assert corpus["test"].lengths.tolist() == [4, 12]
    assert corpus["valid"].truncated == corpus["test"].truncated == 0


@pytest.mark.parametrize("split", SPLITS)
def test_non_utf8_bytes_are_reported_with_file_and_line(tmp_path, split):
    contents = {"train": "a b\n", "valid": "a b\n", "test": "a b\n", split: b"a b\nb a\nbad \xff byte\n"}
    config = text_config(tmp_path, contents["train"], contents["valid"], contents["test"])
    with pytest.raises(UserError) as error:
        load_corpus(config)
    message = str(error.value)
    assert f"{tmp_path / f'{split}.txt'} line 3" in message
    assert "UTF-8" in message


def test_utf8_check_streams_and_stops_at_the_first_bad_line():
    # An endless input: a check that read the whole input before decoding would never return.
    endless = itertools.chain([b"a b\n", "caf\u00e9\n".encode(), b"bad \xff byte\n"], itertools.repeat(b"a b\n"))
    lines = utf8_lines(endless, "input.txt")
    assert [next(lines), next(lines)] == ["a b\n", "caf\u00e9\n"]
    with pytest.raises(UserError, match=r"^input.txt line 3 is not valid UTF-8 \(byte 0xff\)$"):
        next(lines)


def test_missing_text_file_is_named(tmp_path):
    config = text_config(tmp_path, "a b\n")
    (tmp_path / "test.txt").unlink()
    with pytest.raises(UserError, match=f"not found: {tmp_path / 'test.txt'}"):
        load_corpus(config)


def test_text_dataset_without_files_names_the_keys():
    config = load_config(None, {"data": {"dataset": "text", "train_file": "train.txt"}}).data
    with pytest.raises(UserError, match="data.valid_file, data.test_file is not set"):
        load_corpus(config)


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_file_is_named(tmp_path, split):
    config = text_config(tmp_path, **{"train": "a b\n", split: b""})
    with pytest.raises(UserError, match=f"{tmp_path / f'{split}.txt'} is empty"):
        load_corpus(config)


@pytest.mark.parametrize("split", ["train", "valid"])
@pytest.mark.parametrize("blank", ["\n   \n\t\n", "\u00a0\n\n\u3000\n"], ids=["ascii-blank", "unicode-blank"])
def test_split_empty_after_skipping_blank_lines_is_named(tmp_path, split, blank):
    config = text_config(tmp_path, **{"train": "a b\n", split: blank})
    with pytest.raises(UserError) as error:
        load_corpus(config)
    message = str(error.value)
    assert str(tmp_path / f"{split}.txt") in message
    assert "empty" in message


SENTENCE_COUNT = 985
SENTENCE_LENGTHS = [random.Random(0).randint(2, 60) for _ in range(SENTENCE_COUNT)]


def shards(world: int, epoch: int = 0, shuffle: bool = True, seed: int = 7) -> list[list[list[int]]]:
    """Each rank's batches for one epoch (985 sentences in batches of 32: 31 batches, so 2 and 3 ranks must even
    out their batch counts)."""
    result = []
    for rank in range(world):
        sampler = BucketBatchSampler(SENTENCE_LENGTHS, 32, shuffle=shuffle, seed=seed, pool=4, num_replicas=world,
                                     rank=rank)
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        result.append(batches)
    return result


@pytest.mark.parametrize("shuffle", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_rank_shards_are_disjoint_equal_and_cover_every_sentence_once(world, shuffle):
    for epoch in (0, 1):
        per_rank = shards(world, epoch, shuffle)
        assert len({len(batches) for batches in per_rank}) == 1
        assert all(batch for batches in per_rank for batch in batches)
        indices = [index for batches in per_rank for batch in batches for index in batch]
        assert sorted(indices) == list(range(SENTENCE_COUNT))


def test_few_sentences_still_give_every_rank_a_batch():
    for world in (2, 3):
        per_rank = [list(BucketBatchSampler([5, 3, 9, 4, 7], 4, num_replicas=world, rank=rank))
                    for rank in range(world)]
        assert all(len(batches) == len(per_rank[0]) >= 1 for batches in per_rank)
        assert sorted(index for batches in per_rank for batch in batches for index in batch) == [0, 1, 2, 3, 4]


def test_order_reshuffles_across_epochs_and_repeats_for_the_same_seed_and_epoch():
    epoch0, epoch1 = shards(2, epoch=0), shards(2, epoch=1)
    assert epoch0 != epoch1
    assert shards(2, epoch=1) == epoch1
    assert shards(2, epoch=1, seed=8) != epoch1
    assert shards(1, epoch=0, shuffle=False) == shards(1, epoch=5, shuffle=False)


def test_a_first_part_of_an_evaluation_pass_holds_sentences_of_every_length():
    lengths = list(range(3, 1003))  # sorted: batches cut in this order would run shortest first
    sampler = BucketBatchSampler(lengths, 10, shuffle=False, seed=0)
    batches = list(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert all(max(batch) - min(batch) == len(batch) - 1 for batch in batches)  # each batch a length run
    quarter = [lengths[i] for batch in batches[: len(batches) // 4] for i in batch]  # limit_val_batches 0.25
    mean = sum(lengths) / len(lengths)
    assert abs(sum(quarter) / len(quarter) - mean) < 0.05 * mean  # sorted order: 75% below
    deciles = {(length - 3) // 100 for length in quarter}
    assert deciles == set(range(10))  # every tenth of the length range is in the first quarter
    sampler.set_epoch(3)
    assert list(sampler) == batches  # one fixed order, every pass


def test_lightning_set_epoch_hook_reaches_the_sampler():
    loader = make_loader(_frames(), 32, shuffle=True, seed=3, pool=4)
    first = [batch["index"].tolist() for batch in loader]
    _set_sampler_epoch(loader, 1)
    second = [batch["index"].tolist() for batch in loader]
    assert first != second
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(SENTENCE_COUNT))
    tokens = next(iter(loader))["tokens"]
    assert (tokens[:, 0] == BOS_ID).all()


TRAIN_SENTENCES = synthetic_sentences(200, seed=0)
UNICODE_TEXTS = ["Ünïcödé — 日本語のテキスト 🙂🙃", "tabs\tand  double  spaces", "Straße, naïve café: 10€ (ok?)",
                 "zebra"]


def test_word_tokenizer_round_trips_in_vocabulary_text_and_maps_the_rest_to_unk():
    tokenizer = train_tokenizer(TRAIN_SENTENCES, "word")
    texts = TRAIN_SENTENCES[:20] + ["the river saw the cat again"]
    ids = encode_batch(tokenizer, texts)
    assert UNK_ID not in sum(ids, [])
    assert list(decode_ids(tokenizer, [frame(sentence) + [PAD_ID, PAD_ID] for sentence in ids])) == texts
    assert list(decode_ids(tokenizer, [frame(sentence) for sentence in encode_batch(tokenizer, ["the zebra saw"])])) \
        == ["the <unk> saw"]


def test_bpe_tokenizer_round_trips_arbitrary_unicode():
    tokenizer = train_tokenizer(TRAIN_SENTENCES, "bpe", vocab_size=400)
    texts = TRAIN_SENTENCES[:5] + UNICODE_TEXTS
    ids = encode_batch(tokenizer, texts)
    assert UNK_ID not in sum(ids, [])
    assert list(decode_ids(tokenizer, [frame(sentence) for sentence in ids])) == texts


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_saved_tokenizer_loads_with_transformers_and_gives_the_same_ids(tmp_path, kind):
    tokenizer = train_tokenizer(TRAIN_SENTENCES, kind, vocab_size=400)
    save_tokenizer(tokenizer, tmp_path)
    texts = TRAIN_SENTENCES[:5] + UNICODE_TEXTS
    expected = encode_batch(tokenizer, texts)
    hf_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf_tokenizer(texts, add_special_tokens=False)["input_ids"] == expected
    assert [hf_tokenizer.pad_token_id, hf_tokenizer.unk_token_id, hf_tokenizer.bos_token_id,
            hf_tokenizer.eos_token_id] == [PAD_ID, UNK_ID, BOS_ID, EOS_ID]
    assert encode_batch(load_tokenizer(tmp_path), texts) == expected


def run_data_stats(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "data_stats.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_data_stats_script_prints_one_json_line_of_ptb_figures():
    result = run_data_stats(["--config", "configs/ptb.yaml", "--batch-size", "64",
                             "--data.download_url", UNREACHABLE_URL])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    stats = json.loads(lines[0])
    assert {"vocab_size", "splits", "padding_share_bucketed", "padding_share_unbucketed"} <= set(stats)
    assert stats["vocab_size"] == 10002
    assert stats["batch_size"] == 64
    assert {name: split["sentences"] for name, split in stats["splits"].items()} == {
        "train": 42068, "valid": 3370, "test": 3761}
    assert stats["splits"]["test"]["target_tokens"] == 82430
    assert all(set(split) == {"sentences", "target_tokens", "skipped_empty", "truncated"}
               for split in stats["splits"].values())
    assert stats["padding_share_bucketed"] <= 0.03 < stats["padding_share_unbucketed"]


def test_data_stats_script_reports_config_errors_in_one_line():
    result = run_data_stats(["--config", "configs/ptb.yaml", "--model.latnt_dim", "3"])
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "data_stats: error: config: unknown key model.latnt_dim (did you mean model.latent_dim?)"]


def _frames() -> list[list[int]]:
    return [[BOS_ID] + [4] * (length - 2) + [EOS_ID] for length in SENTENCE_LENGTHS]


def test_loader_state_resumes_mid_epoch_after_the_batches_already_seen():
    loader = make_loader(_frames(), 32, shuffle=True, seed=3, pool=4)
    _set_sampler_epoch(loader, 1)
    full = [batch["index"].tolist() for batch in loader]
    iterator = iter(loader)
    seen = [next(iterator)["index"].tolist() for _ in range(3)]
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 3}

    resumed = make_loader(_frames(), 32, shuffle=True, seed=3, pool=4)
    resumed.load_state_dict(state)
    _set_sampler_epoch(resumed, 1)  # Lightning sets the epoch after loading the state, before the first batch
    rest = [batch["index"].tolist() for batch in resumed]
    assert seen + rest == full
    assert resumed.state_dict() == {"epoch": 1, "batches": len(full)}  # counts the skipped batches too
    _set_sampler_epoch(resumed, 2)
    assert len(list(resumed)) == len(full)  # the next epoch is whole again
    other = make_loader(_frames(), 32, shuffle=True, seed=3, pool=4)
    other.load_state_dict({"epoch": 0, "batches": 3})
    _set_sampler_epoch(other, 1)  # a state saved in another epoch skips nothing
    assert [batch["index"].tolist() for batch in other] == full


def test_sampler_state_round_trips_without_a_loader():
    sampler = BucketBatchSampler(SENTENCE_LENGTHS, 32, seed=3, pool=4)
    sampler.set_epoch(2)
    full = list(sampler)
    batches = iter(sampler)
    seen = [next(batches) for _ in range(4)]
    state = sampler.state_dict()
    assert state == {"epoch": 2, "batches": 4}
    resumed = BucketBatchSampler(SENTENCE_LENGTHS, 32, seed=3, pool=4)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    assert seen + list(resumed) == full
    assert resumed.state_dict() == {"epoch": 2, "batches": len(full)}


def test_loader_state_counts_delivered_batches_not_those_prefetched_by_workers():
    loader = make_loader(_frames(), 32, shuffle=True, seed=3, pool=4, num_workers=1)
    full = [batch["index"].tolist() for batch in loader]
    iterator = iter(loader)
    seen = [next(iterator)["index"].tolist() for _ in range(2)]
    assert loader.batch_sampler.yielded > 2  # the worker has been handed batches ahead of use
    assert loader.state_dict() == {"epoch": 0, "batches": 2}
    resumed = make_loader(_frames(), 32, shuffle=True, seed=3, pool=4, num_workers=1)
    resumed.load_state_dict(loader.state_dict())
    assert seen + [batch["index"].tolist() for batch in resumed] == full


class _RecordBatches(L.LightningModule):
    """Trains nothing useful; records the sentence indices of every training batch and can crash."""

    def __init__(self, crash_at: int | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.crash_at, self.seen = crash_at, []

    def training_step(self, batch, batch_idx):
        if self.global_step == self.crash_at:
            raise RuntimeError("simulated crash")
        self.seen.append((self.current_epoch, batch["index"].tolist()))
        return (self.weight * batch["tokens"].float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_resume_from_a_mid_epoch_checkpoint_continues_the_epoch_order(tmp_path):
    def fit(module, ckpt_path=None, callbacks=()):
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=list(callbacks), default_root_dir=tmp_path)
        trainer.fit(module, make_loader(_frames(), 32, shuffle=True, seed=3, pool=4), ckpt_path=ckpt_path)

    def every_3_steps(name):
        return [ModelCheckpoint(dirpath=tmp_path / name, save_top_k=-1, every_n_train_steps=3)]

    reference = _RecordBatches()
    fit(reference, callbacks=every_3_steps("unused"))
    per_epoch = len(reference.seen) // 2
    assert per_epoch > 4

    crashed = _RecordBatches(crash_at=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(crashed, callbacks=every_3_steps("ckpt"))
    assert crashed.seen == reference.seen[:5]
    resumed = _RecordBatches()
    fit(resumed, ckpt_path=tmp_path / "ckpt" / "epoch=0-step=3.ckpt", callbacks=every_3_steps("ckpt"))
    assert resumed.seen == reference.seen[3:]  # batches 4.. of epoch 0 (none repeated), then all of epoch 1


# ---------------------------------------------------------------------------------------------
# data.dataset: hf, and the Arrow cache of token ids


def hf_config(path, **data):
    return load_config(None, {"data": {"dataset": "hf", "path": str(path), **data}}).data


def save_dataset_dict(folder: Path, column: str = "text", **splits) -> Path:
    import datasets

    datasets.DatasetDict({name: datasets.Dataset.from_dict({column: rows, "label": list(range(len(rows)))})
                          for name, rows in splits.items()}).save_to_disk(str(folder))
    return folder


def test_hf_save_to_disk_folder_gives_the_same_corpus_as_the_text_files(tmp_path):
    train, valid, test = synthetic_sentences(300, 0), synthetic_sentences(40, 1), synthetic_sentences(30, 2)
    folder = save_dataset_dict(tmp_path / "saved", "sentence", train=train + [""], validation=valid, test=test)
    corpus, tokenizer = load_corpus(hf_config(folder, text_column="sentence"))
    reference, reference_tokenizer = load_corpus(text_config(tmp_path, "\n".join(train) + "\n",
                                                             "\n".join(valid) + "\n", "\n".join(test) + "\n"))
    assert tokenizer.get_vocab() == reference_tokenizer.get_vocab()
    for split in SPLITS:
        assert list(corpus[split].ids) == list(reference[split].ids)
        assert corpus[split].lengths.tolist() == [len(x) for x in reference[split].ids]
    assert corpus["train"].skipped_empty == 1


def test_token_ids_live_in_a_memory_mapped_cache_file_that_a_second_load_reuses(tmp_path, monkeypatch):
    import textvae.data.cache as data

    folder = save_dataset_dict(tmp_path / "saved", train=synthetic_sentences(200, 0),
                               validation=synthetic_sentences(20, 1), test=synthetic_sentences(20, 2))
    corpus, tokenizer = load_corpus(hf_config(folder))
    ids = corpus["train"].ids
    files = [f["filename"] for f in ids.table.cache_files]
    assert len(files) == 1 and Path(files[0]).name.startswith("cache-")  # on disk, not in Python lists
    assert not isinstance(ids, list) and ids.take([3, 0]) == [ids[3], ids[0]]

    def refuse(*args, **kwargs):
        raise AssertionError("tokenised again instead of read from the cache")

    monkeypatch.setattr(data, "_tokenize_rows", refuse)
    monkeypatch.setattr(data, "train_tokenizer", refuse)
    again, again_tokenizer = load_corpus(hf_config(folder))
    assert [f["filename"] for f in again["train"].ids.table.cache_files] == files
    assert list(again["train"].ids) == list(ids)
    assert again_tokenizer.get_vocab() == tokenizer.get_vocab()


def test_missing_valid_and_test_are_carved_from_train_with_a_fixed_seed(tmp_path):
    import datasets

    rows = [f"a{i // 25} b{i % 25}" for i in range(500)]  # distinct rows; every word is in train
    path = tmp_path / "corpus.parquet"
    datasets.Dataset.from_dict({"text": rows}).to_parquet(str(path))
    config = hf_config(path, holdout=50)
    corpus, tokenizer = load_corpus(config)
    texts = {split: list(decode_ids(tokenizer, (x[1:] for x in corpus[split].ids))) for split in SPLITS}
    assert [len(texts[split]) for split in SPLITS] == [400, 50, 50]
    assert sorted(texts["train"] + texts["valid"] + texts["test"]) == sorted(rows)  # disjoint, nothing lost
    again, _ = load_corpus(config)
    assert list(again["valid"].ids) == list(corpus["valid"].ids)  # the same carve every time


def test_hf_errors_are_one_line_and_name_what_is_missing(tmp_path):
    folder = save_dataset_dict(tmp_path / "saved", "sentence", train=["a b"] * 10, validation=["a"], test=["b"])
    with pytest.raises(UserError, match=r"no column 'text' \(data.text_column\); its columns are 'sentence', 'label'"):
        load_corpus(hf_config(folder))
    with pytest.raises(UserError, match=r"no split 'training' \(data.splits.train\); it has 'train', 'validation', 'test'"):
        load_corpus(hf_config(folder, text_column="sentence", splits={"train": "training"}))
    with pytest.raises(UserError, match=r"column 'label' of .* holds .*int64.*, not text"):
        load_corpus(hf_config(folder, text_column="label"))
    with pytest.raises(UserError, match="data.path must be set when data.dataset is 'hf'"):
        load_config(None, {"data": {"dataset": "hf"}})


def test_offline_hub_id_stops_with_one_line_that_says_to_pass_a_local_path(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "textvae.cli", "train", "--config", str(REPO / "configs" / "debug.yaml"),
         "--data.dataset", "hf", "--data.path", "someone/no-such-corpus", "--output_dir", "runs/x"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "HF_DATASETS_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "someone/no-such-corpus" in lines[0] and "pass a local" in lines[0], lines
    assert not [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]  # nothing written


def test_tokenizer_learns_from_at_most_tokenizer_sample_sentences(tmp_path):
    train = "".join(f"w{i} common\n" for i in range(200))
    corpus, tokenizer = load_corpus(text_config(tmp_path, train, tokenizer_sample=20))
    learnt = set(tokenizer.get_vocab()) - set(SPECIAL_TOKENS)
    assert "common" in learnt and len(learnt) == 21  # "common" and the 20 sampled w<i>
    unknown = sum(ids.count(UNK_ID) for ids in corpus["train"].ids)
    assert unknown == 180
    _, everything = load_corpus(text_config(tmp_path, train, tokenizer_sample=None))
    assert len(everything.get_vocab()) == 201 + len(SPECIAL_TOKENS)


def test_utf8_check_names_the_line_of_a_bad_byte_beyond_the_first_block(tmp_path):
    path = tmp_path / "big.txt"
    good = "caf\u00e9 au lait\n".encode()
    lines = (5 << 20) // len(good)  # past the first 4 MiB block
    path.write_bytes(good * lines + b"bad \xc3( byte\n" + good)
    with pytest.raises(UserError, match=rf"big.txt line {lines + 1} is not valid UTF-8 \(byte 0xc3\)"):
        check_text_file(path)


def reference_batches(lengths, batch_size, shuffle, seed, pool, replicas, epoch):
    """The bucketing rule written plainly: shuffle, sort each pool stably by length, cut, shuffle
    the batches (evaluation: spread them in a fixed order), halve the largest until the count divides by the replicas."""
    generator = torch.Generator().manual_seed(seed + epoch)
    lengths = torch.tensor(lengths)
    order = torch.randperm(len(lengths), generator=generator) if shuffle else torch.arange(len(lengths))
    size = batch_size * pool if shuffle else len(lengths)
    batches = []
    for start in range(0, len(lengths), size):
        chunk = order[start: start + size]
        batches += [b.tolist() for b in chunk[torch.argsort(lengths[chunk], stable=True)].split(batch_size)]
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    else:  # evaluation: batch i at the rank of frac(i * 0.618...) among all batches
        ranks = sorted(range(len(batches)), key=lambda i: (i * 0.6180339887498949) % 1)
        batches = [batches[i] for i in ranks]
    while len(batches) % replicas:
        i = max(range(len(batches)), key=lambda j: len(batches[j]))
        batches[i: i + 1] = [batches[i][: len(batches[i]) // 2], batches[i][len(batches[i]) // 2:]]
    return batches


@pytest.mark.parametrize("count,batch_size,pool,replicas,shuffle", [
    (985, 32, 3, 1, True), (985, 32, 3, 2, True), (1000, 7, 5, 3, True), (37, 4, 2, 4, True), (985, 32, 3, 2, False)])
def test_vectorised_sampler_gives_the_batches_of_the_plain_rule(count, batch_size, pool, replicas, shuffle):
    rng = random.Random(count)
    lengths = [rng.randint(2, 60) for _ in range(count)]
    for epoch in (0, 3):
        expected = reference_batches(lengths, batch_size, shuffle, 7, pool, replicas, epoch)
        for rank in range(replicas):
            sampler = BucketBatchSampler(lengths, batch_size, shuffle, 7, pool, replicas, rank)
            sampler.set_epoch(epoch)
            assert list(sampler) == expected[rank::replicas]
            assert len(sampler) == len(expected) // replicas


def test_the_training_hash_set_is_built_once_per_corpus_and_tokenizer(tmp_path, monkeypatch):
    """Novelty's hash set comes from the tokenisation cache: reused by a second load of the same
    corpus and tokenizer, rebuilt for another tokenizer or changed training text."""
    import textvae.data.cache as data_module
    from textvae.tokenizer import sentence_hash

    monkeypatch.setattr(data_module, "cache_root", lambda: tmp_path / "cache")
    lines = [f"the cat number {i % 50} saw the dog" for i in range(200)]
    files = {}
    for split in ("train", "valid", "test"):
        files[split] = tmp_path / f"{split}.txt"
        files[split].write_text("\n".join(lines) + "\n")
    config = DataConfig(dataset="text", limit=None, train_file=str(files["train"]), valid_file=str(files["valid"]),
                        test_file=str(files["test"]), max_length=4)  # truncation: hashes see whole sentences

    def hash_files():
        return {path.name: path.stat().st_mtime_ns for path in (tmp_path / "cache" / "hashes").glob("*.npy")}

    corpus, tokenizer = load_corpus(config)
    first = np.asarray(corpus["train"].ids.hash_set())
    expected = np.unique([sentence_hash(ids) for ids in encode_batch(tokenizer, lines)])
    assert np.array_equal(first, expected) and len(first) == 50
    built = hash_files()
    assert len(built) == 1
    corpus, _ = load_corpus(config)
    assert np.array_equal(corpus["train"].ids.hash_set(), first) and hash_files() == built  # reused
    corpus, _ = load_corpus(dataclasses.replace(config, tokenizer="bpe", vocab_size=300))
    corpus["train"].ids.hash_set()
    assert len(hash_files()) == 2  # another tokenizer
    with open(files["train"], "a") as handle:
        handle.write("a brand new sentence\n")
    corpus, _ = load_corpus(config)
    assert len(corpus["train"].ids.hash_set()) == 51 and len(hash_files()) == 3  # another corpus
