"""Metrics: known values, the registry on a tiny model and its baselines, weights handling."""

import json

import lpips as lpips_package
import pytest
import torch
import torchvision

from pioneer import features
from pioneer.baselines import MeanFace, ModelSubject, WhitenedPCA
from pioneer.cli import main
from pioneer.evaluation import METRICS, EvalOptions, Evaluator, evaluate_checkpoint
from pioneer.quality import linear_probe, ms_swd, psnr, ssim, trimmed_mean


def _faces(n=64, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 4, size // 4, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear")


def test_psnr_and_ssim_match_known_values():
    x = torch.full((2, 3, 16, 16), 0.0)  # 0.5 in [0, 1]
    assert psnr(x, x + 0.2) == pytest.approx(20.0, abs=1e-4)  # 0.1 in [0, 1]: MSE 0.01
    assert ssim(x, x) == pytest.approx(1.0)
    # Flat images: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1).
    expected = (2 * 0.5 * 0.6 + 1e-4) / (0.25 + 0.36 + 1e-4)
    assert ssim(x, x + 0.2) == pytest.approx(expected, rel=1e-6)
    signal = x + 0.5 * torch.sin(torch.arange(16.0))
    noise = torch.randn(signal.shape, generator=torch.Generator().manual_seed(0))
    scores = [ssim(signal, (signal + s * noise).clamp(-1, 1)) for s in (0.05, 0.2, 0.6)]
    assert 1 > scores[0] > scores[1] > scores[2]


def test_ms_swd_is_zero_for_identical_sets_and_grows_with_noise():
    faces = _faces()
    assert ms_swd(faces, faces)["mean"] == pytest.approx(0.0, abs=1e-9)
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(faces.shape, generator=generator)
    values = [ms_swd(faces, (faces + s * noise).clamp(-1, 1))["mean"] for s in (0.05, 0.2, 0.8)]
    assert 0 < values[0] < values[1] < values[2]
    assert set(ms_swd(faces, faces)) == {"32px", "16px", "mean"}


def test_the_probe_beats_chance_on_a_separable_latent():
    generator = torch.Generator().manual_seed(0)
    codes = torch.nn.functional.normalize(torch.randn(2400, 64, generator=generator), dim=1)
    labels = torch.stack([torch.sign(codes[:, 3]), -torch.sign(codes[:, 7] + codes[:, 9])], 1)
    labels[:5, 0] = 0  # unknown labels are left out
    accuracy, majority = linear_probe(codes[:2000], labels[:2000], codes[2000:], labels[2000:])
    assert (accuracy > 0.93).all() and (majority < 0.65).all()


def test_trimmed_mean_drops_outliers():
    values = torch.cat([torch.ones(98), torch.tensor([1e6, -1e6])])
    assert trimmed_mean(values) == pytest.approx(1.0)


def _random_lpips():
    torch.manual_seed(0)
    return lpips_package.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()


def _random_inception_file(path, monkeypatch):
    """A seeded random-init Inception-v3 in torch-fidelity's layout, saved as a weights file."""
    from torch_fidelity import feature_extractor_inceptionv3 as module

    torch.manual_seed(0)
    with monkeypatch.context() as patch:
        patch.setattr(module, "load_state_dict_from_url", lambda *a, **k: None)
        patch.setattr(module.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None)
        net = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return path


def test_missing_weights_fail_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.delenv("PIONEER_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(features.WeightsMissing) as error:
        features.inception()
    message = str(error.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message
    assert "--inception-weights" in message and "PIONEER_INCEPTION_WEIGHTS" in message
    assert str(tmp_path / "hub") in message and "https://github.com/toshas" in message
    with pytest.raises(features.WeightsMissing, match="alexnet-owt-7be5be79.pth"):
        features.lpips("alex", weights=str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not weights")
    with pytest.raises(features.WeightsMissing, match="not a usable"):
        features.lpips("alex", weights=str(tmp_path / "junk.pth"))


def test_weights_load_from_a_file_and_measure_zero_for_identical_images(tmp_path, monkeypatch):
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "alex.pth")
    net = features.lpips("alex", weights=str(tmp_path / "alex.pth"))
    x = _faces(4)
    assert net(x, x).abs().max() < 1e-6 and (net(x, x.flip(-1)) > 0).all()
    path = _random_inception_file(tmp_path / "inception.pth", monkeypatch)
    monkeypatch.setenv("PIONEER_INCEPTION_WEIGHTS", str(path))
    inception = features.inception()
    faces = _faces(8)
    ev = Evaluator(train=((faces + 1) * 127.5).to(torch.uint8), holdout=torch.zeros(0, 3, 32, 32))
    assert ev.inception_features(faces, "test").shape == (8, 2048)
    assert inception is not None


def test_every_metric_runs_on_a_tiny_model_and_its_baselines(
    trained_run, face_shards, monkeypatch, tmp_path
):
    path = _random_inception_file(tmp_path / "inception.pth", monkeypatch)
    options = EvalOptions(
        metrics=tuple(METRICS), images=16, ppl_samples=16, inception_weights=str(path), batch=8
    )
    report = evaluate_checkpoint(
        str(trained_run), str(face_shards), options=options, lpips=_random_lpips()
    )
    assert report["errors"] == {}
    subjects = report["subjects"]
    assert set(subjects) == {"model", "mean_face", "pca_32"}
    for name, figures in subjects.items():
        for key in ("psnr", "ssim", "lpips", "ms_swd", "fid", "ppl", "probe_accuracy"):
            assert torch.isfinite(torch.tensor(figures[key])), (name, key)
    assert subjects["mean_face"]["ppl"] == pytest.approx(0.0, abs=1e-6)  # one image everywhere
    assert subjects["pca_32"]["psnr"] > subjects["mean_face"]["psnr"]
    assert subjects["mean_face"]["probe_accuracy"] == subjects["mean_face"]["probe_majority"]
    assert report["reference"]["fid_real"] >= 0 and report["reference"]["ms_swd_real"] > 0
    assert report["n"] == 16 and report["holdout"] == 8 and report["resolution"] == 16


def test_baselines_encode_onto_the_sphere():
    train = _faces(40, 16)
    for subject in (MeanFace(train, 8), WhitenedPCA(train, 8)):
        z = subject.encode(train[:5])
        torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
        assert subject.decode(z).shape == (5, 3, 16, 16)
    pca = WhitenedPCA(train, 39)  # every component: reconstruction is exact up to the norm
    z = pca.encode(train[:3])
    assert ModelSubject.__name__ and psnr(train[:3], pca.decode(z)) > 15


def test_eval_cli_writes_the_report_and_names_missing_weights(
    trained_run, face_shards, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    out = tmp_path / "metrics.json"
    args = [
        "eval",
        str(trained_run),
        "--data",
        str(face_shards),
        "--out",
        str(out),
        "--images",
        "16",
    ]
    assert main([*args, "--metrics", "psnr,ssim,probe,fid"]) == 1
    err = capsys.readouterr().err
    assert "fid: Inception-v3" in err and "weights-inception-2015-12-05-6726825d.pth" in err
    report = json.loads(out.read_text())
    assert "psnr" in report["subjects"]["model"] and "fid" in report["errors"]
    assert main([*args, "--metrics", "psnr,nope"]) == 1
    assert "unknown metric(s) ['nope']" in capsys.readouterr().err
    for precision in ("fp32", "bf16"):  # the report says which forward passes it measured
        assert main([*args, "--metrics", "psnr", "--precision", precision]) == 0
        report = json.loads(out.read_text())
        assert report["precision"] == precision and report["errors"] == {}
    fp32, bf16 = (  # a trained model's figures hardly move with the inference precision
        evaluate_checkpoint(
            str(trained_run),
            str(face_shards),
            options=EvalOptions(metrics=("psnr",), baselines=False, precision=precision),
        )["subjects"]["model"]["psnr"]
        for precision in ("fp32", "bf16")
    )
    assert bf16 == pytest.approx(fp32, abs=0.2)
    with pytest.raises(ValueError, match="precision must be one of"):
        EvalOptions(precision="fp16").validate()
