"""VAESystem: the training objective (beta, free bits, rate control, word dropout only in
training, the logged KL never floored), BN-VAE posteriors and the learning-rate schedule."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import CONFIGS, framed_batch, run_main, synthetic_sentences, text_overrides

from textvae.config import Config, load_config
from textvae.errors import UserError
from textvae.losses import gaussian_kl
from textvae.model import VAE
from textvae.system import VAESystem
from textvae.tokenizer import PAD_ID, encode_batch, frame, pad_batch, train_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

VOCAB = 40
SMALL_MODEL = {"latent_dim": 4, "encoder": {"layers": 1, "heads": 2, "width": 16, "feedforward": 32, "dropout": 0.0},
               "decoder": {"layers": 1, "hidden": 16, "embed_dim": 16, "dropout": 0.0}}


def make_system(step: int = 0, model: dict | None = None, **sections) -> VAESystem:
    torch.manual_seed(0)
    config = load_config(None, {"model": {**SMALL_MODEL, **(model or {})}, **sections})
    system = VAESystem(config.to_dict(), VOCAB)
    system._trainer = SimpleNamespace(global_step=step, world_size=1)  # what the step logic reads
    return system


def terms(system: VAESystem, tokens: torch.Tensor, stage: str, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return system.loss_terms(tokens, stage)


TOKENS = framed_batch([3, 5, 7, 2, 9, 4], seed=1, vocab=VOCAB)


def posterior_kl(system: VAESystem, tokens: torch.Tensor) -> torch.Tensor:
    """Analytic KL (B,) of the system's posterior, from the encoder directly."""
    mean, logvar = system.model.encode(tokens)
    return gaussian_kl(mean, logvar).sum(-1)


def test_training_loss_weights_the_kl_by_the_scheduled_beta():
    system = make_system(step=250, kl={"schedule": "linear", "warmup_steps": 1000, "max_beta": 0.8})
    out = terms(system, TOKENS, "train")
    assert float(out["beta"]) == pytest.approx(0.2)
    torch.testing.assert_close(out["kl"], posterior_kl(system, TOKENS))
    torch.testing.assert_close(out["loss"], (out["rec"] + 0.2 * out["kl"]).mean())


def test_free_bits_remove_the_kl_gradient_below_the_floor_but_not_from_the_logged_kl():
    floor = make_system(kl={"schedule": "constant", "free_bits": 100.0})
    out = terms(floor, TOKENS, "train")
    assert (out["kl"] < 100.0 * 4).all()  # the logged KL is the real one, not the floor
    torch.testing.assert_close(out["kl"], posterior_kl(floor, TOKENS))
    torch.testing.assert_close(out["loss"], out["rec"].mean() + 400.0)  # every dimension sits on the floor

    def encoder_gradient(system, loss_of) -> torch.Tensor:
        system.zero_grad()
        loss_of(terms(system, TOKENS, "train")).backward()
        return system.model.encoder.to_posterior.weight.grad.clone()

    only_rec = encoder_gradient(floor, lambda t: t["rec"].mean())
    torch.testing.assert_close(encoder_gradient(floor, lambda t: t["loss"]), only_rec)
    no_floor = make_system(kl={"schedule": "constant", "free_bits": 0.0})
    assert not torch.allclose(encoder_gradient(no_floor, lambda t: t["loss"]), only_rec)


def test_validation_uses_no_word_dropout_beta_one_and_no_floor():
    dropping = make_system(model={"word_dropout": 1.0}, kl={"free_bits": 100.0, "warmup_steps": 1000})
    keeping = make_system(model={"word_dropout": 0.0}, kl={"free_bits": 100.0, "warmup_steps": 1000})
    keeping.load_state_dict(dropping.state_dict())
    valid = terms(dropping, TOKENS, "valid")
    torch.testing.assert_close(valid["rec"], terms(keeping, TOKENS, "valid")["rec"])
    torch.testing.assert_close(valid["loss"], (valid["rec"] + valid["kl"]).mean())  # the true negative ELBO
    # in training every input word becomes <unk> (the same z is drawn: the seeds match)
    assert not torch.allclose(terms(dropping, TOKENS, "train")["rec"], terms(keeping, TOKENS, "train")["rec"])


def test_shared_step_logs_the_unfloored_kl(monkeypatch):
    system = make_system(kl={"free_bits": 100.0})
    logged = {}
    monkeypatch.setattr(system, "log_dict", lambda values, **kwargs: logged.update(values))
    monkeypatch.setattr(system, "log", lambda name, value, **kwargs: logged.update({name: value}))
    torch.manual_seed(0)
    system._shared_step({"tokens": TOKENS}, "train")
    expected = float(posterior_kl(system, TOKENS).mean().detach())
    assert float(logged["train/kl"].detach()) == pytest.approx(expected, rel=1e-5)
    assert float(logged["train/kl"].detach()) < 100.0
    assert float(logged["train/beta"]) == 0.0  # linear warm-up at step 0


def test_rate_controller_holds_the_kl_at_the_target():
    tokenizer = train_tokenizer(synthetic_sentences(200, 0), "word")
    data = pad_batch([frame(ids) for ids in encode_batch(tokenizer, synthetic_sentences(200, 0))])
    target = 6.0
    torch.manual_seed(0)
    config = load_config(None, {"model": {**SMALL_MODEL, "latent_dim": 8, "word_dropout": 0.3},
                                "kl": {"target_rate": target, "controller_gain": 0.1}})
    system = VAESystem(config.to_dict(), tokenizer.get_vocab_size())
    optimizer = torch.optim.Adam(system.parameters(), lr=3e-3)
    assert system.beta() == pytest.approx(1e-4)  # starts at min_beta
    kls, betas = [], []
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        batch = data[torch.randint(0, len(data), (32,), generator=generator)]
        out = system.loss_terms(batch, "train")
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        system.update_controller(out["kl"].mean().detach())
        kls.append(float(out["kl"].mean().detach()))
        betas.append(system.beta())
    recent = sum(kls[-100:]) / 100
    assert recent == pytest.approx(target, rel=0.25)
    assert 1e-4 < betas[-1] < 1.0  # an equilibrium inside the bounds, not pinned to either
    # the controller state travels with the checkpointed state dict
    restored = VAESystem(config.to_dict(), tokenizer.get_vocab_size())
    restored.load_state_dict(system.state_dict())
    assert restored.beta() == pytest.approx(betas[-1])


@pytest.mark.parametrize("decoder", [{}, {"type": "transformer", "heads": 2, "feedforward": 32}])
def test_autoencoder_pretraining_then_a_fresh_decoder_under_the_shifted_schedule(decoder):
    kl = {"ae_steps": 100, "schedule": "linear", "warmup_steps": 200, "free_bits": 0.5}
    system = make_system(step=99, model={"decoder": {**SMALL_MODEL["decoder"], **decoder}}, kl=kl)
    out = terms(system, TOKENS, "train")
    assert float(out["beta"]) == 0.0
    torch.testing.assert_close(out["loss"], out["rec"].mean())  # no KL term, not even the free-bits floor
    system._trainer.global_step = 150
    assert system.beta() == pytest.approx(0.25)  # the warm-up counts from the end of pretraining
    # Train a little so that weights and Adam moments move, then cross the switch.
    optimizer = torch.optim.Adam(system.parameters(), lr=1e-2)
    system._trainer.optimizers = [optimizer]
    for _ in range(3):
        optimizer.zero_grad()
        terms(system, TOKENS, "train")["loss"].backward()
        optimizer.step()
    encoder = {k: v.clone() for k, v in system.model.encoder.state_dict().items()}
    trained = {k: v.clone() for k, v in system.model.decoder.state_dict().items()}
    system._trainer.global_step = 99
    system.on_train_batch_start(None, 0)  # still pretraining: nothing happens
    assert all(torch.equal(v, system.model.decoder.state_dict()[k]) for k, v in trained.items())
    system._trainer.global_step = 100
    system.on_train_batch_start(None, 0)
    fresh = make_system(model={"decoder": {**SMALL_MODEL["decoder"], **decoder}}).model
    for name, value in system.model.encoder.state_dict().items():
        assert torch.equal(value, encoder[name]), name  # the encoder keeps what it learnt
    decoder_names = [n for n in trained if trained[n].is_floating_point()]
    assert any(not torch.equal(trained[n], system.model.decoder.state_dict()[n]) for n in decoder_names)
    # the decoder is distributed as a new one is (same shapes, same init families), not a copy of the trained one
    for name in decoder_names:
        now, new = system.model.decoder.state_dict()[name], fresh.decoder.state_dict()[name]
        assert now.shape == new.shape
        assert now.std().item() == pytest.approx(new.std().item(), rel=0.5, abs=1e-6), name
    restarted = {id(p) for p in system.model.decoder.parameters()}
    assert not any(id(p) in restarted for p in optimizer.state)  # their Adam moments start again
    assert any(id(p) not in restarted for p in optimizer.state)  # the encoder's are kept


def test_autoencoder_pretraining_holds_the_rate_controller_until_it_ends():
    system = make_system(step=10, kl={"ae_steps": 50, "target_rate": 1e-3})  # KL above it: beta must rise
    system.log = system.log_dict = lambda *args, **kwargs: None
    assert float(terms(system, TOKENS, "train")["beta"]) == 0.0
    system.training_step({"tokens": TOKENS}, 0)
    system._trainer.global_step = 50
    assert system.beta() == pytest.approx(1e-4)  # the controller did not move while pretraining
    system.training_step({"tokens": TOKENS}, 0)
    assert system.beta() > 1.01e-4  # and rises from min_beta once it ends


def test_a_pretrained_decoder_is_never_reset():
    with pytest.raises(UserError, match="kl.ae_reset_decoder"):
        load_config(None, {"model": {"decoder": {"type": "pretrained", "pretrained": "gpt2"}},
                           "kl": {"ae_steps": 10}})
    load_config(None, {"model": {"decoder": {"type": "pretrained", "pretrained": "gpt2"}},
                       "kl": {"ae_steps": 10, "ae_reset_decoder": False}})


def test_bn_vae_bounds_each_dimensions_kl_from_below():
    gamma = 0.6
    torch.manual_seed(0)
    config = load_config(None, {"model": {**SMALL_MODEL, "posterior_bn": gamma}})
    model = VAE(config.model, VOCAB)
    assert not model.posterior_bn.weight.requires_grad
    tokens = framed_batch([3, 5, 7, 2, 9, 4, 6, 8, 1, 3, 5, 7, 2, 4, 6, 8], seed=2, vocab=VOCAB)
    mean, logvar = model.train().encode(tokens)
    per_dim = gaussian_kl(mean, logvar).mean(0)  # (D,) batch mean
    assert (per_dim >= gamma**2 / 2 - 1e-4).all()  # KL >= mean^2 / 2 and the batch mean of mean^2 is gamma^2
    torch.testing.assert_close(mean.var(0, unbiased=False), torch.full((4,), gamma**2), rtol=1e-3, atol=1e-3)
    # evaluation uses running statistics: a sentence's code does not depend on its batch
    model.eval()
    alone, _ = model.encode(tokens[:1, :5])
    together, _ = model.encode(tokens)
    torch.testing.assert_close(alone[0], together[0], rtol=1e-5, atol=1e-5)


def test_bow_loss_is_the_words_nll_under_one_softmax_of_z_and_stays_out_of_the_elbo():
    system = make_system(model={"bow_weight": 0.5}, kl={"schedule": "constant"})
    plain = make_system(kl={"schedule": "constant"})  # same seed: the same encoder and decoder
    out, without = terms(system, TOKENS, "train"), terms(plain, TOKENS, "train")
    torch.testing.assert_close(out["rec"], without["rec"])
    torch.testing.assert_close(out["kl"], without["kl"])
    torch.manual_seed(0)
    mean, logvar = system.model.encode(TOKENS)
    z = system.model.reparameterize(mean, logvar)  # the code loss_terms drew with seed 0
    head = system.model.bow
    expected = []
    for sentence, code in zip(TOKENS.tolist(), z):
        words = [w for w in sentence[1:] if w != PAD_ID]  # w1 .. wn <eos>, no padding
        log_probs = torch.log_softmax(code @ head.weight.T + head.bias, dim=-1)
        expected.append(-sum(log_probs[w] for w in words))
    torch.testing.assert_close(out["bow"], torch.stack(expected))
    torch.testing.assert_close(out["loss"], (out["rec"] + out["kl"]).mean() + 0.5 * out["bow"].mean())
    assert "bow" not in without and plain.model.bow is None


def learning_rates(total_steps: float, **optim) -> list[float]:
    system = make_system(optim={"lr": 1e-3, **optim})
    system._trainer = SimpleNamespace(estimated_stepping_batches=total_steps)
    scheduler = system.configure_optimizers()["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(int(min(total_steps, 200)) + 1):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def test_learning_rate_warms_up_linearly_then_follows_the_cosine():
    rates = learning_rates(110, warmup_steps=10, scheduler="cosine", min_lr_ratio=0.1)
    assert rates[0] == pytest.approx(1e-4) and rates[4] == pytest.approx(5e-4)  # (step + 1) / 10
    assert rates[9] == pytest.approx(1e-3) and rates[10] == pytest.approx(1e-3)
    assert rates[60] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half-way down: cos(pi / 2) = 0
    assert rates[110] == pytest.approx(1e-4)  # the floor at the end of the run
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))


def test_a_run_with_no_end_needs_no_cosine_horizon():
    rates = learning_rates(math.inf, warmup_steps=5, scheduler="constant")  # crashed on int(inf) before
    assert rates[5:] == [pytest.approx(1e-3)] * len(rates[5:])
    with pytest.raises(UserError, match="optim.scheduler"):
        load_config(None, {"trainer": {"max_epochs": -1, "max_steps": -1}, "optim": {"scheduler": "cosine"}})
    with pytest.raises(UserError, match="kl.total_steps"):
        load_config(None, {"trainer": {"max_epochs": -1}, "kl": {"schedule": "cyclical"}})
    assert isinstance(load_config(None, {"trainer": {"max_epochs": -1, "max_steps": 500},
                                         "optim": {"scheduler": "cosine"}}), Config)


def test_training_validates_sentences_longer_than_the_model_reads(tmp_path, tiny_corpus):
    corpus = dict(tiny_corpus)
    long_line = " ".join(["the cat saw the ball"] * 12)  # 60 words; the model below reads 38
    corpus["valid"] = tmp_path / "valid.txt"
    corpus["valid"].write_text(tiny_corpus["valid"].read_text() + long_line + "\n")
    result = run_main(["train", "--config", str(CONFIGS / "debug.yaml"), *text_overrides(corpus),
                      "--model.encoder.max_positions", "40", "--data.max_length", "30", "--trainer.max_epochs", "1",
                      "--eval.iw_samples", "1", "--eval.prior_samples", "5", "--eval.interp_pairs", "2",
                      "--output_dir", "runs/long"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 valid sentences are longer than the 38 tokens" in result.stderr
    metrics = json.loads((tmp_path / "runs" / "long" / "metrics.json").read_text())
    assert metrics["valid"]["sentences"] == 61 and metrics["valid"]["cut_to_model"] == 1


def test_cyclical_schedule_spans_the_run_the_trainer_reports():
    system = make_system(kl={"schedule": "cyclical", "cycles": 2, "ratio": 0.5})
    system._trainer = SimpleNamespace(estimated_stepping_batches=1000, global_step=125, world_size=1)
    system.on_fit_start()
    assert system.run_steps == 1000
    assert system.beta() == pytest.approx(0.5)  # 125 steps into a 250-step rise of the first 500-step cycle
    system._trainer.global_step = 500
    assert system.beta() == 0.0  # the second cycle starts half-way through the run
